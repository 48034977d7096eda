"""arena_kd.kfold — the k-fold engine every model stage shares (teachers and student), and the files they exchange.

Modules: ``runner`` (run folds, resume per fold, write OOF), ``fold_model`` (train one fold, predict its held-out
rows), ``training_data`` (labelled rows + folds + extra rows), ``dist`` (multi-process helpers: rank, main-writes),
``oof`` (reading teacher / offline logits tables), ``soft_labels`` (the soft-label file the student trains on).
"""
