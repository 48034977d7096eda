"""Metrics shared by every stage: the competition's multiclass log loss and friends."""

from __future__ import annotations

import numpy as np

from arena_kd.common.keys import CLASS_SUFFIXES

EPS = 1e-15


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def mean_log_softmax(logits: list[np.ndarray]) -> np.ndarray:
    """float32[n, 3]: the mean over models of each one's log-softmax of its float [n, 3] logits (a normalised
    geometric mean once exponentiated). How every k-model ensemble of this project is reduced: the teachers' and the
    student's fold models on rows none of them trained on (kfold.runner.mean_fold_logprobs) and the student's fold
    ensemble at submission (student.final=fold_ensemble)."""
    if not logits:
        raise ValueError("mean_log_softmax needs at least one model's logits")
    parts = []
    for z in logits:
        z = np.asarray(z, dtype=np.float64)
        m = z.max(axis=1, keepdims=True)
        parts.append(z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True)))
    return np.mean(parts, axis=0).astype(np.float32)


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = EPS) -> float:
    """Kaggle's multiclass log loss: rows renormalised, clipped to [eps, 1-eps]. labels: (n,) ints; probs: (n, 3)."""
    return float(np.mean(row_log_loss(labels, probs, eps)))


def pooled_prior(labels: np.ndarray) -> np.ndarray:
    """float64[3]: label frequencies with A and B wins pooled (no position preference), +1 smoothing per class: the
    class prior of the stacking stage's ``prior`` candidate and of the submission's last-resort answer."""
    c = np.bincount(np.asarray(labels, dtype=np.int64), minlength=3)[:3].astype(np.float64)
    ab = (c[0] + c[1]) / 2.0
    p = np.array([ab, ab, c[2]]) + 1.0
    return p / p.sum()


def own_mean(probs: np.ndarray) -> np.ndarray:
    """(n, 3) -> (n, 3): every row replaced by the mean prediction of ``probs``, A and B pooled — a constant with the
    model's own class mix. A model that beats it ranks the rows (its row-to-row variation says which answer is
    better) beyond the mix it predicts; no label enters it."""
    m = np.asarray(probs, dtype=np.float64).mean(axis=0)
    m[:2] = m[:2].mean()
    return np.tile(m, (len(probs), 1))


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def calibration_table(labels: np.ndarray, probs: np.ndarray) -> list[dict]:
    """Per class: mean predicted probability vs observed frequency (a calibration summary)."""
    y = np.asarray(labels)
    out = []
    for k, name in enumerate(CLASS_SUFFIXES):
        out.append({"class": name, "mean_pred": float(np.mean(probs[:, k])), "observed": float(np.mean(y == k))})
    return out


# --------------------------------------------------------------------------- uncertainty

BOOTSTRAP_DRAWS = 2000


def row_log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = EPS) -> np.ndarray:
    """float64[n]: each row's term of :func:`log_loss` (same renormalisation and clipping); their mean is the log
    loss."""
    p = np.asarray(probs, dtype=np.float64)
    p = np.clip(p / p.sum(axis=1, keepdims=True), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.int64)
    return -np.log(p[np.arange(len(y)), y])


def _group_index(groups: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n), n
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    return inv.reshape(-1), int(inv.max()) + 1 if n else 0


def bootstrap_mean(values: np.ndarray, groups: np.ndarray | None = None, *, draws: int = BOOTSTRAP_DRAWS,
                   seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of per-row ``values`` (float[n]) with a percentile bootstrap interval.

    ``groups`` (any hashable per row, e.g. the prompt group of data.folds.prompt_groups): whole groups are
    resampled with replacement (a cluster bootstrap), so rows that share a prompt — and whose errors are
    correlated — are not counted as independent evidence. None resamples rows.
    Returns {"mean", "lo", "hi", "n", "groups"}; lo/hi are NaN for fewer than 2 groups.
    """
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    idx, g = _group_index(groups, n)
    out = {"mean": float(v.mean()) if n else float("nan"), "lo": float("nan"), "hi": float("nan"), "n": int(n),
           "groups": int(g)}
    if g < 2:
        return out
    sums = np.bincount(idx, weights=v, minlength=g)
    counts = np.bincount(idx, minlength=g).astype(np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty(draws)
    block = max(1, min(draws, 2_000_000 // g))  # bound the [block, g] weight matrix
    for start in range(0, draws, block):
        b = min(block, draws - start)
        w = np.stack([np.bincount(rng.integers(0, g, size=g), minlength=g) for _ in range(b)]).astype(np.float64)
        stats[start:start + b] = (w @ sums) / np.maximum(w @ counts, 1.0)
    alpha = (1.0 - level) / 2.0
    out["lo"], out["hi"] = (float(x) for x in np.quantile(stats, [alpha, 1.0 - alpha]))
    return out


def log_loss_interval(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None = None,
                      **kw) -> dict[str, float]:
    """Log loss with a bootstrap interval (see :func:`bootstrap_mean`)."""
    return bootstrap_mean(row_log_loss(labels, probs), groups, **kw)


def log_loss_difference(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                        groups: np.ndarray | None = None, **kw) -> dict[str, float]:
    """Paired difference log_loss(a) − log_loss(b) on the same rows, with a bootstrap interval (same resamples for
    both: the interval of the difference, much narrower than the two separate intervals suggest).
    Negative = a is better."""
    return bootstrap_mean(row_log_loss(labels, probs_a) - row_log_loss(labels, probs_b), groups, **kw)


def verdict(diff: dict[str, float]) -> str:
    """'a better' / 'b better' when the interval of a − b excludes 0, else 'not resolved at this size'."""
    if not np.isfinite(diff.get("lo", np.nan)) or not np.isfinite(diff.get("hi", np.nan)):
        return "not resolved at this size"
    if diff["hi"] < 0:
        return "a better"
    if diff["lo"] > 0:
        return "b better"
    return "not resolved at this size"
