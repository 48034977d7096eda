"""LightGBM stacker: cross-validated multiclass boosting on both A/B orientations, position-symmetric prediction.

Every training row is used twice — as is and A/B-swapped (:func:`arena_kd.blend.features.swap_features`, label 0↔1)
— and every prediction averages the row and its swapped copy (classes 0↔1 exchanged back), so the model has no
position bias by construction: predicting the swapped pair gives exactly the prediction with columns 0/1 exchanged.
Models are LightGBM text files (no pickle).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from arena_kd.blend.features import swap_features
from arena_kd.common.config_stages import StackingConfig
from arena_kd.common.io import atomic_path
from arena_kd.common.keys import SWAP_PERMUTATION
from arena_kd.common.metrics import log_loss

log = logging.getLogger(__name__)
SWAP_CLASSES = np.array(SWAP_PERMUTATION)


INNER_VALID_FRACTION = 0.2


def capacity(cfg: StackingConfig, n_rows: int) -> dict[str, float]:
    """Tree capacity for ``n_rows`` training pairs (one orientation).

    ``stacking.capacity: fixed`` uses the configured values as they are. ``auto`` (default) treats them as the
    large-data setting and shrinks capacity on few rows, so 400 rows and 57k rows do not get the same trees:
    leaves ≤ sqrt(n)/4 (≥ 4), min_data_in_leaf ≥ n/40 (≤ 200), feature_fraction ≤ 0.5 below 5,000 rows,
    L2 ≥ 5,000/n. (A prior for small tabular data, not tuned on the sample: 400 rows → 5 leaves, ≥ 20 rows per
    leaf, L2 12.5; 1,958 rows → 11 leaves, ≥ 48 per leaf, L2 2.6; 57k rows → the configured values.)"""
    c = {"num_leaves": cfg.num_leaves, "min_data_in_leaf": cfg.min_data_in_leaf,
         "feature_fraction": cfg.feature_fraction, "lambda_l2": cfg.lambda_l2}
    if cfg.capacity == "fixed" or n_rows <= 0:
        return c
    c["num_leaves"] = int(min(cfg.num_leaves, max(4, round(n_rows ** 0.5 / 4))))
    c["min_data_in_leaf"] = int(max(cfg.min_data_in_leaf, min(200, n_rows // 40)))
    if n_rows < 5000:
        c["feature_fraction"] = float(min(cfg.feature_fraction, 0.5))
    c["lambda_l2"] = float(max(cfg.lambda_l2, 5000.0 / n_rows))
    return c


def lgb_params(cfg: StackingConfig, seed: int, n_rows: int = 0) -> dict:
    """LightGBM parameters for the 3-class stacker on ``n_rows`` pairs (deterministic; threads follow
    OMP_NUM_THREADS)."""
    return {
        "objective": "multiclass",
        "num_class": 3,
        "metric": "multi_logloss",
        "learning_rate": cfg.learning_rate,
        **capacity(cfg, n_rows),
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        **({"num_threads": cfg.num_threads} if cfg.num_threads else {}),
        "verbosity": -1,
    }


def inner_split(n: int, groups: np.ndarray | None, seed: int, fraction: float = INNER_VALID_FRACTION) -> np.ndarray:
    """bool[n]: the inner validation rows (whole groups, ~``fraction`` of them, seeded) used only to pick the round
    count."""
    g = np.arange(n) if groups is None else np.asarray(groups)
    uniq = np.unique(g)
    if len(uniq) < 2:
        return np.zeros(n, dtype=bool)
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * len(uniq))))
    chosen = rng.choice(uniq, size=min(k, len(uniq) - 1), replace=False)
    return np.isin(g, chosen)


def both_orientations(x: pd.DataFrame, y: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows followed by their A/B-swapped copies; labels 0↔1 for the copies (tie stays tie)."""
    xs = pd.concat([x, swap_features(x)], ignore_index=True)
    ys = np.concatenate([y, SWAP_CLASSES[np.asarray(y, dtype=np.int64)]])
    return xs, ys


def predict_symmetric(booster: lgb.Booster, x: pd.DataFrame, num_iteration: int | None = None) -> np.ndarray:
    """float64[n,3]: mean of the prediction on ``x`` and the class-swapped prediction on ``swap_features(x)``."""
    if len(x) == 0:
        return np.zeros((0, 3))
    p = booster.predict(x, num_iteration=num_iteration)
    q = booster.predict(swap_features(x), num_iteration=num_iteration)[:, SWAP_CLASSES]
    return (p + q) / 2.0


def _dataset(x: pd.DataFrame, y: np.ndarray, reference: lgb.Dataset | None = None) -> lgb.Dataset:
    xs, ys = both_orientations(x, y)
    return lgb.Dataset(xs, label=ys, reference=reference, free_raw_data=False)


@dataclass
class CVResult:
    """Fold boosters (trained on the other folds), honest OOF probabilities float64[n,3] and the early-stopped
    rounds."""

    boosters: list[lgb.Booster]
    oof: np.ndarray
    best_iterations: list[int]
    fold_ids: list[int] = field(default_factory=list)

    @property
    def full_rounds(self) -> int:
        return max(1, int(round(float(np.mean(self.best_iterations)))))


def early_stopped_rounds(x: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None, cfg: StackingConfig,
                         seed: int) -> int:
    """Rounds chosen by early stopping on an inner split of (x, y) — rows the caller will score are never in it."""
    valid = inner_split(len(x), groups, seed)
    if not valid.any() or valid.all():
        return cfg.num_boost_round
    dtrain = _dataset(x[~valid], y[~valid])
    dvalid = _dataset(x[valid], y[valid], reference=dtrain)
    booster = lgb.train(lgb_params(cfg, seed, int((~valid).sum())), dtrain, num_boost_round=cfg.num_boost_round,
                        valid_sets=[dvalid], valid_names=["inner"],
                        callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)])
    return int(booster.best_iteration or booster.current_iteration())


def train_cv(x: pd.DataFrame, y: np.ndarray, folds: np.ndarray, cfg: StackingConfig, seed: int,
             groups: np.ndarray | None = None) -> CVResult:
    """k-fold training. For held-out fold k, the round count is early-stopped on an inner split (whole ``groups``,
    e.g. prompts) of the *other* folds, then a booster is refit on all the other folds for that many rounds and
    predicts fold k (both orientations). Fold k never influences its own model, so the OOF is honest."""
    y = np.asarray(y, dtype=np.int64)
    folds = np.asarray(folds)
    oof = np.full((len(x), 3), np.nan)
    boosters, best, fold_ids = [], [], []
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        if not tr.any():
            continue
        g_tr = None if groups is None else np.asarray(groups)[tr]
        rounds = early_stopped_rounds(x[tr].reset_index(drop=True), y[tr], g_tr, cfg, seed + int(k))
        booster = lgb.train(lgb_params(cfg, seed, int(tr.sum())), _dataset(x[tr], y[tr]), num_boost_round=rounds)
        oof[va] = predict_symmetric(booster, x[va])
        log.info("stacker fold %s: %d rounds (inner early stopping), held-out log loss %.4f", k, rounds,
                 log_loss(y[va], oof[va]))
        boosters.append(booster)
        best.append(int(rounds))
        fold_ids.append(int(k))
    return CVResult(boosters=boosters, oof=oof, best_iterations=best, fold_ids=fold_ids)


def train_full(x: pd.DataFrame, y: np.ndarray, cfg: StackingConfig, seed: int, rounds: int) -> lgb.Booster:
    """One booster on every row (both orientations) for ``rounds`` rounds (the CV's mean early-stopped count)."""
    return lgb.train(lgb_params(cfg, seed, len(x)), _dataset(x, np.asarray(y, dtype=np.int64)), num_boost_round=rounds)


def save_booster(booster: lgb.Booster, path: str | Path, num_iteration: int | None = None) -> Path:
    """LightGBM text model, written atomically."""
    with atomic_path(path) as tmp:
        booster.save_model(str(tmp), num_iteration=num_iteration)
    return Path(path)


def load_booster(path: str | Path) -> lgb.Booster:
    return lgb.Booster(model_file=str(path))


def gain_importance(booster: lgb.Booster) -> pd.DataFrame:
    """DataFrame[feature, gain] sorted by gain, descending."""
    imp = pd.DataFrame({"feature": booster.feature_name(), "gain": booster.feature_importance(importance_type="gain")})
    return imp.sort_values("gain", ascending=False, ignore_index=True)
