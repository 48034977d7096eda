"""Log-linear pool of candidate probabilities, fitted on out-of-fold rows: one weight per member and a tie offset.

    p = softmax(Σ_j w_j · log p_j + [0, 0, t])        members p_j: float[n, 3] each (A wins, B wins, tie)

Why a pool next to the LightGBM stacker: the stacker gets the student's logits as extra columns and must rediscover,
split by split, that they are log-odds, from ~2k rows. Measured on the demo (`make all`, seeds 42 / 43 / 44; README
"A log pool of the student and the features"): out of fold the LightGBM stacker beat the features-only booster by
−0.0015 / −0.0084 / −0.0010 (none resolved), this pool of the same booster and the student (2 weights, 1 offset)
by −0.0198 / −0.0137 / −0.0167 (42 and 44 resolved). The 3rd-place Kaggle solution likewise blended its stage-1
models out of fold (repo mtenenholtz/lmsys-chatbot-arena-solution; ../shared/reference/public-facts.md); that a
booster over logits wastes small data is our reading of the figures above, not isolated.

Properties: weights ≥ 0 (a negative weight would invert a member's ranking; never wanted, and a bound keeps a fit on
few rows sane) and ≤ W_MAX (the temperature fit's 1/T_MIN); one shared A/B term (only the tie offset is free after
the softmax), so a pool of position-symmetric members is position-symmetric. The negative log likelihood is convex
in (w, t) (z is linear in them), so L-BFGS-B with the exact gradient finds the global optimum; the start (w = 1 for
the first member, 0 otherwise, t = 0: the first member as it is) is kept when the optimum is not better, so a fitted
pool never scores worse on its fitting rows than its first member. A N(start, 1) prior on the parameters (PRIOR_SD)
keeps a fit on a few rows from running to the bounds. fp64 throughout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

from arena_kd.common.metrics import log_loss, softmax

W_MAX = 20.0
TIE_OFFSET_MAX = 20.0
PRIOR_SD = 1.0
"""The fit is a MAP estimate: a N(start, PRIOR_SD²) prior on every parameter (the weights and the offset), added to
the summed NLL, so it weighs like a few rows however many rows there are. Why: on the rehearsal's 118-row fold the
unpenalised fit went to weights (11.8, 0) and offset +20 (the bound) for 0.908 → 0.891 on its rows and scored 3.81
on the held-out fold (make rehearsal, tenth session); with the prior that fold's pool stays near its start. On the
demo's 1,958 rows the prior costs < 0.001 of the fit."""
_EPS = 1e-15


def member_logs(members: list[np.ndarray]) -> np.ndarray:
    """float64[k, n, 3]: log of each member's probabilities (clipped at 1e-15, as metrics.log_loss clips)."""
    if not members:
        raise ValueError("a log pool needs at least one member")
    arr = np.stack([np.asarray(m, dtype=np.float64) for m in members])
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"members must be float[n, 3] of one shape, got {arr.shape[1:]}")
    return np.log(np.clip(arr, _EPS, 1.0))


def _logits(logs: np.ndarray, weights: np.ndarray, tie_offset: float) -> np.ndarray:
    z = np.tensordot(np.asarray(weights, dtype=np.float64), logs, axes=1)
    z[:, 2] += tie_offset
    return z


def pool_probs(members: list[np.ndarray], weights, tie_offset: float) -> np.ndarray:
    """float64[n, 3]: the pooled probabilities of ``members`` (k arrays float[n, 3]) with ``weights`` float[k]."""
    logs = member_logs(members)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(logs),):
        raise ValueError(f"{len(logs)} members, {w.size} weights")
    return softmax(_logits(logs, w, float(tie_offset)))


@dataclass
class LogPoolFit:
    weights: list[float]
    tie_offset: float
    log_loss_before: float  # the first member alone on the fitting rows
    log_loss_after: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def fit_pool(members: list[np.ndarray], labels: np.ndarray) -> LogPoolFit:
    """The weights in [0, W_MAX] and tie offset in ±TIE_OFFSET_MAX minimising the log loss of :func:`pool_probs`
    against ``labels`` (int[n]) plus the prior (PRIOR_SD); module doc for the start and why the optimum is global
    (the prior is convex too)."""
    logs = member_logs(members)
    y = np.asarray(labels, dtype=np.int64)
    k, n = logs.shape[0], logs.shape[1]
    start = np.zeros(k + 1)
    start[0] = 1.0
    if n == 0:
        return LogPoolFit(start[:k].tolist(), 0.0, float("nan"), float("nan"), 0)
    onehot = np.eye(3)[y]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:  # mean NLL + the prior (PRIOR_SD), per row
        z = _logits(logs, theta[:k], theta[k])
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        dz = (np.exp(logp) - onehot) / n  # d(mean NLL)/dz
        grad = np.concatenate([np.einsum("knc,nc->k", logs, dz), [dz[:, 2].sum()]])
        shift = (theta - start) / (PRIOR_SD ** 2 * n)
        return float(-logp[np.arange(n), y].mean() + 0.5 * shift @ (theta - start)), grad + shift

    bounds = [(0.0, W_MAX)] * k + [(-TIE_OFFSET_MAX, TIE_OFFSET_MAX)]
    res = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    before = objective(start)[0]  # the prior is 0 at the start
    theta = res.x if np.isfinite(res.fun) and res.fun < before else start
    after = log_loss(y, softmax(_logits(logs, theta[:k], theta[k])))
    return LogPoolFit([float(w) for w in theta[:k]], float(theta[k]), log_loss(y, members[0]), after, n)


def cross_fitted_pool(members: list[np.ndarray], labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """float64[n, 3]: fold k's rows pooled with the weights fitted on the other folds (an honest out-of-fold pool;
    fitting on the rows it then scores would flatter it, as with the temperature)."""
    y = np.asarray(labels, dtype=np.int64)
    folds = np.asarray(folds)
    part = [np.asarray(m, dtype=np.float64) for m in members]
    out = np.empty((len(y), 3))
    for k in np.unique(folds):
        va = folds == k
        fit = fit_pool([m[~va] for m in part], y[~va])  # one fold only: no other rows, the start (member 0 as it is)
        out[va] = pool_probs([m[va] for m in part], fit.weights, fit.tie_offset)
    return out
