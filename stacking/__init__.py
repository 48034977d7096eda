"""stacking stage (`arena-kd stack`): fits the stacker of :mod:`arena_kd.blend` on student OOF logits + features.

Modules: ``rows`` (the training rows: OOF logits joined to labels and folds), ``candidates`` (the blends compared:
features-only, length-only, student-only, full, and the choice between them), ``run`` (the stage), ``report``
(stage table, reliability diagram, feature importance).
"""
