"""Answers that need no student: the stacker (features-only or with student logits), A/B-averaged,
and the last-resort class prior.

``stacker_probs`` optionally averages the stacker over both orientations of each row (predict on
the A/B-swapped frame, swap the A/B probabilities back, average), so position cannot decide the
answer even if the stacker itself is slightly asymmetric. It needs the student's logits in both
orientations, so rows without TTA are predicted in the original orientation only.

Without a usable stacker, a row the student reached is answered by the raw student softmax only when its out-of-fold
log loss beats the class prior's (:func:`fallback_losses`): a raw, uncalibrated student can be worse than the prior
(issue 22 measured 1.08 against 0.96), and without out-of-fold evidence it is not used either.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.keys import CLASS_SUFFIXES, LOGIT_COLUMNS
from arena_kd.common.metrics import pooled_prior

log = logging.getLogger("arena_kd.submission")
STUDENT_SOFTMAX, PRIOR = "student_softmax", "prior"


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


def _losses_from_stacking_oof(path: Path) -> dict[str, dict[str, float]]:
    """{student_softmax: {tta, single}, prior: {tta, single}} out-of-fold log losses from the stacking stage's
    oof.parquet: the raw student columns (``student_raw_*``: the softmax the submission would give) and the prior's."""
    from arena_kd.common.io import read_keyed_table
    from arena_kd.common.metrics import log_loss

    oof, _ = read_keyed_table(path)
    y = oof["label"].to_numpy(dtype=np.int64)

    def loss(prefix: str) -> float | None:
        cols = [f"{prefix}_{c}" for c in CLASS_SUFFIXES]
        if not all(c in oof.columns for c in cols):
            return None
        return log_loss(y, oof[cols].to_numpy(dtype=np.float64))

    out: dict[str, dict[str, float]] = {STUDENT_SOFTMAX: {}, PRIOR: {}}
    for mode, prefix in (("tta", "student_raw"), ("single", "student_single_raw")):
        v = loss(prefix)
        if v is not None:
            out[STUDENT_SOFTMAX][mode] = v
    prior = loss("prior")
    if prior is not None:
        out[PRIOR] = {"tta": prior, "single": prior}
    return out


def _losses_from_student_oof(path: Path, train_path: str | None) -> dict[str, dict[str, float]]:
    """The same from the student stage's oof.parquet and the training labels (no stacking stage was run): the prior
    is the labels' A/B-pooled frequencies (in-sample: it can only look better than it is, never worse)."""
    from arena_kd.common.io import read_keyed_table
    from arena_kd.common.metrics import log_loss

    labels = _train_labels(train_path)
    oof, _ = read_keyed_table(path)
    rows = oof.assign(id=oof["id"].astype(str)).merge(labels, on="id", how="inner")
    if rows.empty:
        return {}
    y = rows["label"].to_numpy(dtype=np.int64)
    out: dict[str, dict[str, float]] = {STUDENT_SOFTMAX: {}, PRIOR: {}}
    for mode, cols in (("tta", list(LOGIT_COLUMNS)), ("single", [f"orig_{c}" for c in LOGIT_COLUMNS])):
        if all(c in rows.columns for c in cols):
            out[STUDENT_SOFTMAX][mode] = log_loss(y, student_softmax(rows[cols].to_numpy(dtype=np.float64), None))
    prior = log_loss(y, np.tile(pooled_prior(y), (len(y), 1)))
    out[PRIOR] = {"tta": prior, "single": prior}
    return out


def fallback_losses(stack_dir: str | Path, student_oof: str | Path, train_path: str | None) -> tuple[dict, str]:
    """(out-of-fold log losses {candidate: {student mode: loss}}, source) of the answers left without a stacker: the
    raw student softmax and the class prior. From the stacking stage's ``oof.parquet`` when it is readable, else from
    the student's OOF and the training labels, else ({}, 'none') — no evidence."""
    for path, read in ((Path(stack_dir) / "oof.parquet", lambda p: _losses_from_stacking_oof(p)),
                       (Path(student_oof), lambda p: _losses_from_student_oof(p, train_path))):
        if not path.is_file():
            continue
        try:
            losses = read(path)
        except Exception as exc:  # noqa: BLE001 - evidence that cannot be read is no evidence
            log.warning("%s: out-of-fold losses unreadable (%s: %s)", path, type(exc).__name__, exc)
            continue
        if losses.get(STUDENT_SOFTMAX) and losses.get(PRIOR):
            return losses, str(path)
    return {}, "none"


def student_beats_prior(losses: dict, mode: str) -> tuple[bool, str]:
    """(use the raw student softmax for rows of student ``mode``?, why) — only on out-of-fold evidence that its log
    loss is below the prior's."""
    stu = losses.get(STUDENT_SOFTMAX, {}).get(mode, losses.get(STUDENT_SOFTMAX, {}).get("tta"))
    pri = losses.get(PRIOR, {}).get(mode)
    if stu is None or pri is None:
        return False, "no out-of-fold log loss of the raw student: the class prior answers"
    if stu < pri:
        return True, f"raw student softmax (out-of-fold log loss {stu:.4f} < prior {pri:.4f})"
    return False, f"class prior (out-of-fold log loss {pri:.4f} <= raw student softmax {stu:.4f})"


def _train_labels(train_path: str | None) -> pd.DataFrame:
    from arena_kd.data.readers import read_labels  # Kaggle layout: only the id and winner columns are parsed

    labels = read_labels(train_path)
    return labels.assign(id=labels["id"].astype(str)).dropna(subset=["label"])


def class_prior(train_path: str | None) -> tuple[np.ndarray, str]:
    """(probs float64[3], source): label frequencies of the training file with A and B pooled (so the
    prior has no position preference), or uniform when the file cannot be read."""
    if train_path and Path(train_path).is_file():
        try:
            labels = _train_labels(train_path)["label"].astype(int).to_numpy()
            if len(labels):
                return pooled_prior(labels), f"class prior of {train_path} ({len(labels)} labels, A/B pooled)"
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read class prior from %s (%s)", train_path, exc)
    return np.full(3, 1.0 / 3.0), "uniform"


def student_softmax(orig: np.ndarray, swap: np.ndarray | None) -> np.ndarray:
    """Student probabilities float64[n,3] without a stacker: mean log-softmax over the orientations available (the
    stacking stage's ``student`` candidate before its temperature: ``blend.features.student_probs``)."""
    from arena_kd.blend.features import student_probs

    return student_probs({"orig": np.asarray(orig, dtype=np.float64),
                          "swap": None if swap is None else np.asarray(swap, dtype=np.float64)})
