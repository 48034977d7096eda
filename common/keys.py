"""Keys every layer shares, defined once: class order, column names, the A/B swap permutation, input formats.

Class order everywhere: 0 = A wins, 1 = B wins, 2 = tie (the Kaggle submission's column order).
"""

from __future__ import annotations

LABELS = ("winner_model_a", "winner_model_b", "winner_tie")
"""Probability columns of a submission, in class order."""

LOGIT_COLUMNS = ("logit_a", "logit_b", "logit_tie")
"""Logit columns of every OOF / soft-label / export-reference table, in class order."""

CLASS_SUFFIXES = tuple(c.removeprefix("logit_") for c in LOGIT_COLUMNS)
"""Short class names ('a', 'b', 'tie'), in class order: suffixes of per-class columns and keys of per-class reports."""

CLASS_NAMES = ("A wins", "B wins", "tie")
"""Human names of the classes, in class order (reports and messages)."""

SWAP_PERMUTATION = (1, 0, 2)
"""Index permutation of the class axis that exchanges A and B (tie stays): ``x[..., SWAP_PERMUTATION]``."""

FORMATS = ("auto", "kaggle", "arena", "pairs")
"""Layouts of an input pair file (``data.format``, ``--format``): detected from the columns, or one forced
(:mod:`arena_kd.data.readers`)."""
