"""Prior-matched soft labels (``student.distill.prior_match``): per-class offsets added to the teachers'
log-probabilities so that, over a student's labelled training rows, the mean soft label equals those rows' label
frequencies — over all rows, or per data source (the canonical ``source`` column: a file's ``source`` column or its
stem, so Kaggle's single train.csv is one source and ``per_source`` equals ``all_rows`` there).

    soft_i = log_softmax(log p_teacher_i + b_g)        b_g [3] (per teacher: [k,3]) for row i's group g

Why this form: with the teacher's log-probabilities as a fixed offset, the per-class intercepts b_g that maximise the
log-likelihood of the group's labels are exactly those whose mean prediction equals the label frequencies (the score
equation of a multinomial logit's intercepts). They are found by the fixed-point step b ← b + log π − log mean p(b)
(the label-shift correction of Saerens, Latinne & Decaestecker, Neural Computation 2002, with π known instead of
estimated). So the matched soft labels never score worse than the teacher's on those rows, and the offsets are 3
numbers per group: they move the label mix, not the ranking of rows within a group.

What it is for: a teacher that has not learnt a source's label mix teaches it wrongly to the student. Measured on
the sample (README "Prior-matched soft labels"): the demo teacher puts 3.5% on ties over HH-RLHF rows, which have
none, and 13% over MT-Bench rows, which have 21%. What it is not: preference knowledge — the offsets are constant
within a group.

Everything here is numpy float64; a row's labels are {0,1,2} and unlabelled rows (label < 0 or NA, e.g. extra
pairs) take their group's offsets, or all rows' offsets when their group has too few labelled rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import log_softmax, softmax

from arena_kd.common.keys import SWAP_PERMUTATION

FLOOR = -20.0  # lowest offset: a class absent from a group's labels (HH-RLHF has no ties) would drive its offset to
#                -inf; exp(-20) ≈ 2e-9 of the teacher's mass is kept, so every log-probability stays finite
MIN_GROUP_ROWS = 50  # fewer labelled rows than this: the group takes all rows' offsets (3 frequencies from a handful
#                      of rows would be noise, and an absent class would be zeroed on the evidence of a few rows)


def target_frequencies(labels: np.ndarray, *, symmetric: bool = True, prior: np.ndarray | None = None,
                       prior_rows: float = 0.0) -> np.ndarray:
    """[3] frequencies the offsets match for ``labels`` [n] in {0,1,2}: ``symmetric``: A and B pooled; ``prior`` ([3])
    and ``prior_rows`` (m): (n·freq + m·prior) / (n + m), shrunk towards ``prior`` as if m more rows had it (a
    Dirichlet prior's posterior mean)."""
    y = np.asarray(labels, dtype=np.int64)
    c = np.bincount(y, minlength=3).astype(np.float64)
    if symmetric:
        c[:2] = c[:2].mean()
    pi = c / c.sum()
    if prior is not None and prior_rows > 0:
        pi = (len(y) * pi + prior_rows * np.asarray(prior, dtype=np.float64)) / (len(y) + prior_rows)
    return pi


def fit_offsets(logp: np.ndarray, labels: np.ndarray, *, symmetric: bool = True, prior: np.ndarray | None = None,
                prior_rows: float = 0.0, max_iter: int = 500, tol: float = 1e-8) -> np.ndarray:
    """Offsets b for ``logp`` ([n,3], or [n,k,3] for k teachers, each fitted alone) and ``labels`` [n] in {0,1,2}:
    mean_i softmax(logp_i + b) = the label frequencies (to ``tol``), a class without labels at :data:`FLOOR`.
    ``symmetric``: fitted over every row and its A/B swap (labels swapped too), so b_A = b_B and the matched
    frequencies are A/B pooled — the pipeline treats the two sides alike (swap augmentation, TTA), and a position
    bias in a few hundred labels is noise to keep out of the soft labels. ``prior``, ``prior_rows``: the target is
    shrunk towards ``prior`` (:func:`target_frequencies`). Returns [3] or [k,3] float64 offsets, max 0
    per teacher."""
    x = np.asarray(logp, dtype=np.float64)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[:, None, :]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"logp must be [n,3] or [n,k,3]; got {tuple(np.shape(logp))}")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(x) or len(y) == 0 or y.min() < 0 or y.max() > 2:
        raise ValueError("labels must be [n] values in {0,1,2}, one per row, n > 0")
    pi = target_frequencies(y, symmetric=symmetric, prior=prior, prior_rows=prior_rows)
    x = log_softmax(x, axis=-1)
    if symmetric:  # every row and its A/B swap: the mean then matches the pooled frequencies with b_A = b_B
        x = np.concatenate([x, x[..., list(SWAP_PERMUTATION)]])
    present = pi > 0
    b = np.zeros(x.shape[1:])  # [k,3]
    b[:, ~present] = FLOOR
    for _ in range(max_iter):
        mean = softmax(x + b, axis=-1).mean(axis=0)  # [k,3]
        if np.abs(mean[:, present] - pi[present]).max() < tol:
            break
        b[:, present] += np.log(pi[present]) - np.log(mean[:, present])
        b = np.maximum(b - b[:, present].max(axis=-1, keepdims=True), FLOOR)
    return b[0] if squeeze else b


def _labels(frame: pd.DataFrame) -> np.ndarray:
    """[n] int labels, -1 where the row has none (NA or negative)."""
    lab = pd.to_numeric(frame["label"], errors="coerce").fillna(-1).to_numpy()
    return np.where(lab >= 0, lab, -1).astype(np.int64)


def match_frame(frame: pd.DataFrame, mode: str, prior_rows: float = 0.0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Copy of ``frame`` (columns ``label``, ``source``, ``teacher_logits``: (3,) or (k,3) per row) with its
    ``teacher_logits`` prior-matched (``mode`` = all_rows | per_source), offsets fitted on its labelled rows, each
    source's frequencies shrunk towards all rows' by ``prior_rows`` pseudo-rows; and a summary {group: {rows,
    labelled, labels (the matched frequencies), before, after}} of the mean soft label per group. ``off``:
    unchanged."""
    if mode == "off":
        return frame, {}
    if mode not in ("all_rows", "per_source"):
        raise ValueError(f"prior_match: unknown mode '{mode}'")
    t = np.stack([np.asarray(v, dtype=np.float64) for v in frame["teacher_logits"]])  # [n,3] or [n,k,3]
    y = _labels(frame)
    labelled = y >= 0
    if not labelled.any():
        raise ValueError("prior_match needs labelled rows")
    groups = (frame["source"].astype(str).to_numpy() if mode == "per_source"
              else np.full(len(frame), "all rows", dtype=object))
    all_rows = fit_offsets(t[labelled], y[labelled])
    pooled = target_frequencies(y[labelled])
    out = log_softmax(t, axis=-1)
    summary: dict[str, Any] = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        fit_rows = m & labelled
        own = fit_rows.sum() >= MIN_GROUP_ROWS
        b = fit_offsets(t[fit_rows], y[fit_rows], prior=pooled, prior_rows=prior_rows) if own else all_rows
        out[m] = log_softmax(out[m] + b, axis=-1)
        before = softmax(t[m], axis=-1).mean(axis=0)
        after = softmax(out[m], axis=-1).mean(axis=0)
        target = target_frequencies(y[fit_rows], prior=pooled, prior_rows=prior_rows) if own else pooled
        summary[g] = {"rows": int(m.sum()), "labelled": int(fit_rows.sum()), "own_offsets": bool(own),
                      "labels": np.round(target, 4).tolist(),
                      "before": np.round(before, 4).tolist(), "after": np.round(after, 4).tolist()}
    res = frame.copy()
    res["teacher_logits"] = list(out.astype(np.float32))
    return res, summary


def describe(summary: dict[str, Any]) -> str:
    """One line: each group's mean tie mass before → after (the first teacher's, per teacher)."""
    def tie(v):
        return float(np.asarray(v).reshape(-1, 3)[0, 2])

    return "; ".join(f"{g} ({s['labelled']} labelled): tie {tie(s['before']):.3f} → {tie(s['after']):.3f} "
                     f"(labels {s['labels'][2]:.3f})" for g, s in summary.items())
