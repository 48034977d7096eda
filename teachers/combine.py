"""Combine teachers' out-of-fold logits into one soft-label distribution.

combined probs  p = sum_i w_i * softmax(logits_i)          (a mixture in probability space)
soft labels       = log_softmax(log(p) / T)                 (temperature T; 1 = as is)
Weights: ``equal``; ``fixed`` (each teacher's ``weight``, normalised); ``fit`` (weights = softmax(theta),
theta minimising the OOF log loss of the mixture with scipy L-BFGS-B). Under ``fit`` a teacher that
has a fixed ``weight`` keeps it as its share of the mixture (shares must sum to < 1) and the other
teachers share the rest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax
from scipy.special import softmax as sp_softmax

from arena_kd.common.errors import UserError
from arena_kd.common.metrics import EPS


def teacher_probs(logits: Sequence[np.ndarray]) -> np.ndarray:
    """list of k [n,3] logits → float64 [k,n,3] probabilities."""
    return np.stack([sp_softmax(np.asarray(lg, dtype=np.float64), axis=-1) for lg in logits])


def mixture_log_loss(weights: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> float:
    """Log loss of sum_i w_i probs[i] (probs [k,n,3], weights [k] summing to 1)."""
    p = np.tensordot(weights, probs, axes=1)  # [n,3]
    picked = np.clip(p[np.arange(len(labels)), labels], EPS, 1.0)
    return float(-np.mean(np.log(picked)))


def fit_weights(probs: np.ndarray, labels: np.ndarray, fixed: Sequence[float | None] | None = None) -> np.ndarray:
    """Mixture weights [k] minimising OOF log loss; ``fixed[i]`` (a share in [0,1)) pins teacher i."""
    k = probs.shape[0]
    fixed = list(fixed) if fixed is not None else [None] * k
    pinned = np.array([f if f is not None else 0.0 for f in fixed], dtype=np.float64)
    free = np.array([f is None for f in fixed])
    if not free.any():
        return pinned / pinned.sum()
    rest = 1.0 - pinned.sum()
    if rest <= 0:
        raise UserError("teachers: fixed weights under combine.weights=fit are shares of the mixture "
                        "and must sum to < 1")
    labels = np.asarray(labels, dtype=np.int64)

    def expand(theta: np.ndarray) -> np.ndarray:
        w = pinned.copy()
        w[free] = rest * sp_softmax(theta)
        return w

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s = sp_softmax(theta)
        w = expand(theta)
        p = np.tensordot(w, probs, axes=1)
        rows = np.arange(len(labels))
        picked = np.clip(p[rows, labels], EPS, 1.0)
        loss = float(-np.mean(np.log(picked)))
        dl_dw = -np.mean(probs[:, rows, labels] / picked, axis=1)[free] * rest  # [k_free]
        grad = s * (dl_dw - np.dot(s, dl_dw))  # softmax Jacobian
        return loss, grad

    res = minimize(objective, np.zeros(int(free.sum())), jac=True, method="L-BFGS-B")
    return expand(res.x)


def resolve_weights(
    mode: str,
    names: Sequence[str],
    configured: Sequence[float | None],
    probs: np.ndarray,
    labels: np.ndarray,
) -> np.ndarray:
    """Weights [k] summing to 1 for ``combine.weights`` = equal | fixed | fit."""
    k = len(names)
    if mode == "equal":
        return np.full(k, 1.0 / k)
    if mode == "fixed":
        unset = [n for n, w in zip(names, configured) if w is None]
        if unset:
            raise UserError(f"teachers.combine.weights=fixed: teacher '{unset[0]}' has no `weight`")
        w = np.asarray(configured, dtype=np.float64)
        if w.sum() <= 0:
            raise UserError("teachers.combine.weights=fixed: the weights must not all be 0")
        return w / w.sum()
    if mode == "fit":
        return fit_weights(probs, labels, configured)
    raise UserError(f"teachers.combine.weights: unknown mode '{mode}'")


def combine_logits(probs: np.ndarray, weights: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """[k,n,3] probabilities, [k] weights → float64 [n,3] log-probabilities of the tempered mixture."""
    p = np.clip(np.tensordot(weights, probs, axes=1), EPS, 1.0)
    return log_softmax(np.log(p) / temperature, axis=-1)


def temper_logits(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """One teacher's [n,3] logits → float64 log-probabilities at temperature T."""
    return log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)
