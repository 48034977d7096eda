"""Answers that need no student: the stacker (features-only or with student logits), A/B-averaged,
and the last-resort class prior.

``stacker_probs`` optionally averages the stacker over both orientations of each row (predict on
the A/B-swapped frame, swap the A/B probabilities back, average), so position cannot decide the
answer even if the stacker itself is slightly asymmetric. It needs the student's logits in both
orientations, so rows without TTA are predicted in the original orientation only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("arena_kd.submission")


def load_stacker_or_none(stack_dir: str | Path, embedding_model: str | None = None):
    """``arena_kd.blend.stacker.load_stacker(stack_dir)``, or None (logged) when it is missing or broken.

    ``embedding_model`` (the config's stacking.embedding_model) relocates the trained stacker's sentence
    embedder, e.g. to a folder inside the Kaggle artifacts dataset.
    """
    try:
        from arena_kd.blend.stacker import load_stacker
        from arena_kd.common.io import resolve_path

        kw = {"embedding_model": resolve_path(embedding_model)} if embedding_model else {}
        return load_stacker(str(stack_dir), **kw)
    except Exception as exc:  # noqa: BLE001 - a missing stacker must not stop the submission
        log.warning("stacker not usable (%s: %s); falling back", type(exc).__name__, exc)
        return None


def stacker_probs(stacker, df: pd.DataFrame, student: dict | None, swap_average: bool) -> np.ndarray:
    """Calibrated probabilities float64[n, 3] from the stacker; student=None → features-only model."""
    from arena_kd.blend.features import swap_student
    from arena_kd.data.schema import swap_frame, swap_logits

    def one(frame: pd.DataFrame, stud: dict | None) -> np.ndarray:
        if stud is None:
            return np.asarray(stacker.predict_features_only(frame), dtype=np.float64)
        return np.asarray(stacker.predict(frame, stud), dtype=np.float64)

    p = one(df, student)
    if not swap_average or (student is not None and student.get("swap") is None):
        return p
    q = swap_logits(one(swap_frame(df), swap_student(student)))  # keeps max_length: both orientations route alike
    return (p + q) / 2.0


def class_prior(train_path: str | None) -> tuple[np.ndarray, str]:
    """(probs float64[3], source): label frequencies of the training file with A and B pooled (so the
    prior has no position preference), or uniform when the file cannot be read."""
    if train_path and Path(train_path).is_file():
        try:
            from arena_kd.data.readers import read_labels  # Kaggle layout: only the id and winner columns are parsed

            labels = read_labels(train_path)["label"].dropna().astype(int).to_numpy()
            if len(labels):
                counts = np.bincount(labels, minlength=3).astype(np.float64)[:3]
                ab = (counts[0] + counts[1]) / 2.0
                p = np.array([ab, ab, counts[2]]) + 1.0
                return p / p.sum(), f"class prior of {train_path} ({len(labels)} labels, A/B pooled)"
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read class prior from %s (%s)", train_path, exc)
    return np.full(3, 1.0 / 3.0), "uniform"


def student_softmax(orig: np.ndarray, swap: np.ndarray | None) -> np.ndarray:
    """Student probabilities float64[n,3] without a stacker: mean log-softmax over the orientations available."""
    from scipy.special import log_softmax, softmax

    lp = log_softmax(np.asarray(orig, dtype=np.float64), axis=1)
    if swap is not None:
        lp = (lp + log_softmax(np.asarray(swap, dtype=np.float64), axis=1)) / 2.0
    return softmax(lp, axis=1)
