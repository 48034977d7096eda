"""Metrics shared by every stage: the competition's multiclass log loss and friends."""

from __future__ import annotations

import numpy as np

EPS = 1e-15


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = EPS) -> float:
    """Kaggle's multiclass log loss: rows renormalised, clipped to [eps, 1-eps]. labels: (n,) ints; probs: (n, 3)."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    p = np.clip(p, eps, 1 - eps)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def calibration_table(labels: np.ndarray, probs: np.ndarray) -> list[dict]:
    """Per class: mean predicted probability vs observed frequency (a calibration summary)."""
    y = np.asarray(labels)
    out = []
    for k, name in enumerate(("a", "b", "tie")):
        out.append({"class": name, "mean_pred": float(np.mean(probs[:, k])), "observed": float(np.mean(y == k))})
    return out
