"""stacking stage: LightGBM on student OOF logits + length/structure/similarity features, temperature-calibrated.

Modules: ``text_bytes`` (texts as one byte buffer), ``similarity`` (hashed TF-IDF), ``embeddings`` (cached
sentence embeddings), ``features`` (compute_features / swap_features), ``model`` (CV LightGBM, symmetric
prediction), ``calibration`` (temperature), ``run`` (`arena-kd stack`), ``predict`` (load_stacker for submission),
``report`` (stage table, reliability diagram, feature importance).
"""
