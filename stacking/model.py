"""LightGBM stacker: cross-validated multiclass boosting on both A/B orientations, position-symmetric prediction.

Every training row is used twice — as is and A/B-swapped (:func:`stacking.features.swap_features`, label 0↔1)
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

from arena_kd.config import StackingConfig
from arena_kd.io import atomic_path
from arena_kd.metrics import log_loss
from stacking.features import swap_features

log = logging.getLogger(__name__)
SWAP_CLASSES = np.array([1, 0, 2])


def lgb_params(cfg: StackingConfig, seed: int) -> dict:
    """LightGBM parameters for the 3-class stacker (deterministic; threads follow OMP_NUM_THREADS)."""
    return {
        "objective": "multiclass",
        "num_class": 3,
        "metric": "multi_logloss",
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "feature_fraction": cfg.feature_fraction,
        "lambda_l2": cfg.lambda_l2,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


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
    """Fold boosters (trained on the other folds), honest OOF probabilities float64[n,3] and the early-stopped rounds."""

    boosters: list[lgb.Booster]
    oof: np.ndarray
    best_iterations: list[int]
    fold_ids: list[int] = field(default_factory=list)

    @property
    def full_rounds(self) -> int:
        return max(1, int(round(float(np.mean(self.best_iterations)))))


def train_cv(x: pd.DataFrame, y: np.ndarray, folds: np.ndarray, cfg: StackingConfig, seed: int) -> CVResult:
    """k-fold training on the given folds with early stopping on the held-out fold (both orientations)."""
    y = np.asarray(y, dtype=np.int64)
    folds = np.asarray(folds)
    params = lgb_params(cfg, seed)
    oof = np.full((len(x), 3), np.nan)
    boosters, best, fold_ids = [], [], []
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        if not tr.any():
            continue
        dtrain = _dataset(x[tr], y[tr])
        dvalid = _dataset(x[va], y[va], reference=dtrain)
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=cfg.num_boost_round,
            valid_sets=[dvalid],
            valid_names=["heldout"],
            callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)],
        )
        it = booster.best_iteration or booster.current_iteration()
        oof[va] = predict_symmetric(booster, x[va], num_iteration=it)
        log.info("stacker fold %s: %d rounds, held-out log loss %.4f", k, it, log_loss(y[va], oof[va]))
        boosters.append(booster)
        best.append(int(it))
        fold_ids.append(int(k))
    return CVResult(boosters=boosters, oof=oof, best_iterations=best, fold_ids=fold_ids)


def train_full(x: pd.DataFrame, y: np.ndarray, cfg: StackingConfig, seed: int, rounds: int) -> lgb.Booster:
    """One booster on every row (both orientations) for ``rounds`` rounds (the CV's mean early-stopped count)."""
    return lgb.train(lgb_params(cfg, seed), _dataset(x, np.asarray(y, dtype=np.int64)), num_boost_round=rounds)


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
