"""arena_kd.blend.temperature + arena_kd.blend.booster: temperature recovery, never-worse calibration, symmetric
LightGBM stacker that beats its inputs, LightGBM text save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena_kd.blend.booster import load_booster, predict_symmetric, save_booster, train_cv, train_full
from arena_kd.blend.features import compute_features, is_student_column, swap_features, swap_student
from arena_kd.blend.temperature import apply_temperature, fit_temperature
from arena_kd.common.config_stages import StackingConfig
from arena_kd.common.metrics import log_loss, softmax
from arena_kd.data.schema import make_frame, swap_frame

FAST = StackingConfig(num_boost_round=200, early_stopping_rounds=20, min_data_in_leaf=10, learning_rate=0.1,
                      num_leaves=7)


def _sample_labels(probs: np.ndarray, rng) -> np.ndarray:
    u = rng.random(len(probs))[:, None]
    return (u > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, 2)


def test_temperature_recovers_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(20000, 3))
    y = _sample_labels(softmax(z / 2.0), rng)  # truth: T = 2
    fit = fit_temperature(softmax(z), y)
    assert fit.temperature == pytest.approx(2.0, rel=0.05)
    assert fit.log_loss_after < fit.log_loss_before
    assert fit.log_loss_after == pytest.approx(log_loss(y, apply_temperature(softmax(z), fit.temperature)))


@pytest.mark.parametrize("seed", range(5))
def test_temperature_never_raises_log_loss_on_its_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    probs = softmax(rng.normal(scale=rng.uniform(0.1, 4), size=(n, 3)))
    y = _sample_labels(probs, rng) if seed % 2 else rng.integers(0, 3, n)  # calibrated or pure noise
    fit = fit_temperature(probs, y)
    assert fit.log_loss_after <= log_loss(y, probs) + 1e-12
    assert log_loss(y, apply_temperature(probs, fit.temperature)) <= log_loss(y, probs) + 1e-12


def test_apply_temperature_one_is_identity():
    p = softmax(np.random.default_rng(1).normal(size=(10, 3)))
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, rtol=1e-12)


def synthetic_pairs(n: int, seed: int = 0):
    """Pairs whose label depends on the length difference (a text feature) and on a latent the student sees."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "sun", "sea", "tree", "code", "data", "river"]
    la, lb = rng.integers(3, 60, n), rng.integers(3, 60, n)
    latent = rng.normal(size=n)
    score = 0.06 * (la - lb) + 1.5 * latent
    p = softmax(np.stack([score, -score, np.full(n, -0.3)], axis=1) * 1.2)
    y = _sample_labels(p, rng)
    rows = [{"id": f"s{i}", "prompt": [f"question {i}?"],
             "response_a": [" ".join(rng.choice(words, la[i]))], "response_b": [" ".join(rng.choice(words, lb[i]))],
             "label": int(y[i])} for i in range(n)]
    noise = rng.normal(scale=0.5, size=n)
    orig = np.stack([latent + noise + 0.3, -(latent + noise), np.zeros(n)], axis=1)  # student: latent + a position bias
    swap = np.stack([latent + noise, -(latent + noise) + 0.3, np.zeros(n)], axis=1)
    return make_frame(rows), y, {"orig": orig, "swap": swap}


@pytest.fixture(scope="module")
def trained():
    df, y, student = synthetic_pairs(900)
    feats = compute_features(df, student=student)
    folds = np.arange(len(df)) % 3
    cv = train_cv(feats, y, folds, FAST, seed=0)
    fo_cols = [c for c in feats.columns if not is_student_column(c)]
    cv_fo = train_cv(feats[fo_cols], y, folds, FAST, seed=0)
    return df, y, student, feats, cv, cv_fo


def test_stacker_beats_its_inputs(trained):
    df, y, student, feats, cv, cv_fo = trained
    assert not np.isnan(cv.oof).any()
    student_avg = softmax((np.log(softmax(student["orig"])) + np.log(softmax(student["swap"]))) / 2)
    ll_stack, ll_student, ll_fo = log_loss(y, cv.oof), log_loss(y, student_avg), log_loss(y, cv_fo.oof)
    assert ll_stack < ll_student - 0.02, (ll_stack, ll_student)
    assert ll_stack < ll_fo - 0.02, (ll_stack, ll_fo)
    # length carries signal
    assert ll_fo < log_loss(y, np.tile(np.bincount(y, minlength=3) / len(y), (len(y), 1))) - 0.02
    assert all(b >= 1 for b in cv.best_iterations) and len(cv.boosters) == 3


def test_stacker_prediction_is_position_symmetric(trained):
    df, y, student, feats, cv, _ = trained
    booster = cv.boosters[0]
    p = predict_symmetric(booster, feats)
    swapped_feats = compute_features(swap_frame(df), student=swap_student(student))
    q = predict_symmetric(booster, swapped_feats)
    np.testing.assert_allclose(q, p[:, [1, 0, 2]], atol=1e-6)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)


def test_save_load_gives_identical_predictions(trained, tmp_path):
    df, y, student, feats, cv, _ = trained
    full = train_full(feats, y, FAST, seed=0, rounds=cv.full_rounds)
    path = save_booster(full, tmp_path / "m.txt")
    assert path.read_text().startswith("tree")  # LightGBM text format, not pickle
    loaded = load_booster(path)
    np.testing.assert_array_equal(predict_symmetric(loaded, feats), predict_symmetric(full, feats))
    assert loaded.feature_name() == list(feats.columns)


def test_both_orientations_doubles_rows_with_swapped_labels():
    from arena_kd.blend.booster import both_orientations

    x = pd.DataFrame({"a_len": [1.0, 2.0], "b_len": [3.0, 4.0], "diff_len": [-2.0, -2.0]})
    xs, ys = both_orientations(x, np.array([0, 2]))
    assert ys.tolist() == [0, 2, 1, 2]
    pd.testing.assert_frame_equal(xs.iloc[2:].reset_index(drop=True), swap_features(x))


def test_capacity_scales_with_rows_and_fixed_keeps_the_config():
    from arena_kd.blend.booster import capacity

    cfg = StackingConfig()
    small, mid, big = capacity(cfg, 400), capacity(cfg, 2000), capacity(cfg, 57000)
    assert small["num_leaves"] < mid["num_leaves"] <= big["num_leaves"] == cfg.num_leaves
    assert small["lambda_l2"] > mid["lambda_l2"] > big["lambda_l2"] >= cfg.lambda_l2
    assert small["min_data_in_leaf"] >= cfg.min_data_in_leaf and big["min_data_in_leaf"] <= 200
    assert small["feature_fraction"] <= 0.5 and big["feature_fraction"] == cfg.feature_fraction
    fixed = StackingConfig(capacity="fixed")
    assert capacity(fixed, 400) == {"num_leaves": 15, "min_data_in_leaf": 20, "feature_fraction": 0.8, "lambda_l2": 1.0}


def test_inner_split_takes_whole_groups():
    from arena_kd.blend.booster import inner_split

    groups = np.repeat(np.arange(50), 4)
    valid = inner_split(len(groups), groups, seed=0)
    assert 0 < valid.mean() < 0.4
    assert all(len(set(valid[groups == g])) == 1 for g in range(50))


def test_the_scored_fold_never_influences_its_own_prediction():
    """Early stopping uses an inner split of the training folds: permuting fold 0's labels changes nothing in fold
    0's OOF."""
    df, y, student = synthetic_pairs(300, seed=4)
    feats = compute_features(df, student=student)
    folds = np.arange(len(df)) % 2
    a = train_cv(feats, y, folds, FAST, seed=0)
    y2 = y.copy()
    y2[folds == 0] = np.random.default_rng(0).permutation(y2[folds == 0])
    b = train_cv(feats, y2, folds, FAST, seed=0)
    np.testing.assert_array_equal(a.oof[folds == 0], b.oof[folds == 0])
    assert not np.array_equal(a.oof[folds == 1], b.oof[folds == 1])
