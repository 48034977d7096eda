"""arena_kd.blend — the stacker as a model: pair features, the symmetric LightGBM booster, temperature, and
``Stacker`` (load a trained stacker folder, predict). Trained by the stacking stage, applied by the submission.

Modules: ``text_bytes`` (texts as one byte buffer), ``similarity`` (hashed TF-IDF), ``embeddings`` (cached sentence
embeddings), ``features`` (compute_features / swap_features), ``booster`` (CV LightGBM, symmetric prediction),
``temperature`` (fit / apply), ``source_model`` (the source of a pair learned from its text), ``stacker``
(load_stacker, Stacker.predict).
"""
