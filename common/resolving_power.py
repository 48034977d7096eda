"""How likely is a held-out split to resolve an effect measured out of fold? A projection from clustered row values.

The report's verdicts are paired differences of per-row log losses, with a 95% bootstrap interval that resamples
whole prompt groups (:func:`arena_kd.common.metrics.bootstrap_mean`). Whether such an interval excludes zero depends
on the effect and on how many independent groups the split holds: the sample's test split has 316 HH rows on 304
prompts but 180 MT-Bench rows on only 9 questions. The out-of-fold rows (every training row, scored by a model that
never saw its question) estimate both the effect and its spread, per source:

    d_ij = mu + u_i + e_ij      group i, row j;  Var(u) = between (groups), Var(e) = within (rows of one group)

estimated by one-way ANOVA moments for unequal group sizes (the between part clipped at 0). A split with m groups and
r rows of that source then has Var(mean) = between / m + within / r, and a mix of sources weighs each by its share of
the rows. From the standard error SE and the expected difference D follow the chance that a 95% interval excludes
zero on D's side, Phi(|D| / SE - 1.96), and the factor by which the split (every source's rows and groups alike)
must grow for an 80% chance: ((1.96 + 0.84) * SE / |D|)^2.

Assumptions, not measured here: the out-of-fold effect and spread carry over to the held-out rows (the test split's
models are fold ensembles, the out-of-fold ones single fold models); the percentile bootstrap interval is close to
the normal one, +-1.96 SE. The projection says whether an unresolved verdict is the split's size or the effect's
absence; it is no substitute for the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

Z95 = float(norm.ppf(0.975))
TARGET_POWER = 0.80  # the chance Projection.scale_for_80 asks for
Z80 = float(norm.ppf(TARGET_POWER))


@dataclass(frozen=True)
class Components:
    """One source's row values: mean, between-group and within-group variance, and how many rows and groups."""
    mean: float
    between: float
    within: float
    rows: int
    groups: int

    def variance_of_mean(self, rows: int, groups: int) -> float:
        """Var of the mean over a split of ``rows`` rows in ``groups`` groups drawn like these."""
        return self.between / max(groups, 1) + self.within / max(rows, 1)


def variance_components(values: np.ndarray, groups: np.ndarray) -> Components:
    """One-way random-effects ANOVA moments (unbalanced groups) of ``values`` float[n] grouped by ``groups`` [n].
    With one row per group the two parts cannot be told apart and all of the variance counts as within (per row);
    with a single group the between part is unknown (NaN)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n < 2:
        raise ValueError(f"variance components need at least 2 rows, got {n}")
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    inv = inv.reshape(-1)
    g = int(inv.max()) + 1
    mu = float(v.mean())
    if g == n:
        return Components(mu, 0.0, float(v.var(ddof=1)), n, g)
    sizes = np.bincount(inv, minlength=g).astype(np.float64)
    means = np.bincount(inv, weights=v, minlength=g) / sizes
    within = float(((v - means[inv]) ** 2).sum()) / (n - g)
    if g < 2:
        return Components(mu, float("nan"), within, n, g)
    ms_between = float((sizes * (means - mu) ** 2).sum()) / (g - 1)
    n0 = (n - float((sizes ** 2).sum()) / n) / (g - 1)  # the effective group size of unbalanced one-way ANOVA
    return Components(mu, max(0.0, (ms_between - within) / n0), within, n, g)


@dataclass(frozen=True)
class Projection:
    expected: float  # the expected difference on the split
    se: float
    half_width: float  # of the expected 95% interval
    chance: float  # that the interval excludes zero on the expected side
    scale_for_80: float  # how many times the split (rows and groups of every source) for an 80% chance
    rows: int
    groups: int

    def to_dict(self) -> dict:
        return asdict(self)


def project(parts: list[tuple[Components, int, int]]) -> Projection:
    """The expected verdict on a split holding, per source, (components measured out of fold, its rows, its groups)."""
    rows = sum(r for _, r, _ in parts)
    if rows <= 0:
        raise ValueError("the split holds no rows")
    share = [r / rows for _, r, _ in parts]
    expected = float(sum(w * c.mean for w, (c, _, _) in zip(share, parts)))
    var = float(sum(w ** 2 * c.variance_of_mean(r, g) for w, (c, r, g) in zip(share, parts)))
    se = float(np.sqrt(var))
    if not np.isfinite(se):
        chance, scale = float("nan"), float("nan")
    elif se == 0.0:
        chance, scale = (1.0, 0.0) if expected != 0.0 else (0.0, float("inf"))
    else:
        chance = float(norm.cdf(abs(expected) / se - Z95))
        scale = float(((Z95 + Z80) * se / abs(expected)) ** 2) if expected != 0.0 else float("inf")
    return Projection(expected, se, Z95 * se, chance, scale, rows, sum(g for _, _, g in parts))
