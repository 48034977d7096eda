"""Temperature scaling: probabilities p -> softmax(log p / T), T fitted with scipy on out-of-fold predictions.

The negative log likelihood is convex in beta = 1/T, so a bounded scalar search finds the global optimum on
[T_MIN, T_MAX]; T = 1 is always tried too and kept when it is at least as good, so the fitted temperature
never raises the log loss of the data it was fitted on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from arena_kd.common.metrics import log_loss, softmax

T_MIN, T_MAX = 0.05, 20.0
_EPS = 1e-15


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """probs float[n,3] -> float64[n,3] = softmax(log(probs) / T)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0))
    return softmax(logp / float(temperature))


@dataclass
class TemperatureFit:
    temperature: float
    log_loss_before: float
    log_loss_after: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """The T in [T_MIN, T_MAX] minimising log loss of ``apply_temperature(probs, T)`` against ``labels`` (int[n])."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    before = log_loss(y, p)
    if len(y) == 0:
        return TemperatureFit(1.0, before, before, 0)

    def nll(beta: float) -> float:
        return log_loss(y, apply_temperature(p, 1.0 / beta))

    res = minimize_scalar(nll, bounds=(1.0 / T_MAX, 1.0 / T_MIN), method="bounded", options={"xatol": 1e-6})
    t, after = 1.0 / float(res.x), float(res.fun)
    if not np.isfinite(after) or after > before:
        t, after = 1.0, before
    return TemperatureFit(temperature=t, log_loss_before=before, log_loss_after=after, n=len(y))
