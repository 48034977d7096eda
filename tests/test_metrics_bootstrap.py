"""arena_kd.common.metrics bootstrap: intervals that cover, resample prompts (not rows) when rows share one, paired
differences, verdicts only when the interval excludes zero."""

from __future__ import annotations

import numpy as np
import pytest

from arena_kd.common.metrics import (
    bootstrap_mean,
    log_loss,
    log_loss_difference,
    log_loss_interval,
    row_log_loss,
    softmax,
    verdict,
)


def test_row_log_loss_averages_to_log_loss():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(50, 3)))
    y = rng.integers(0, 3, 50)
    assert row_log_loss(y, p).mean() == pytest.approx(log_loss(y, p))
    ci = log_loss_interval(y, p, seed=1)
    assert ci["mean"] == pytest.approx(log_loss(y, p)) and ci["lo"] < ci["mean"] < ci["hi"] and ci["n"] == 50


def test_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    reps = 150
    for r in range(reps):
        v = rng.exponential(1.0, size=80)  # true mean 1
        ci = bootstrap_mean(v, draws=400, seed=r)
        hits += ci["lo"] <= 1.0 <= ci["hi"]
    assert 0.85 <= hits / reps <= 0.99


def test_grouped_bootstrap_resamples_prompts_not_rows():
    """Ten rows per prompt with identical values: the row bootstrap pretends there are 10x more independent rows
    and gives a ~sqrt(10) narrower interval; the prompt bootstrap does not."""
    rng = np.random.default_rng(2)
    per_group = rng.normal(size=30)
    v = np.repeat(per_group, 10)
    groups = np.repeat(np.arange(30), 10)
    rows = bootstrap_mean(v, None, seed=0)
    grouped = bootstrap_mean(v, groups, seed=0)
    one_per_group = bootstrap_mean(per_group, None, seed=0)
    assert grouped["groups"] == 30 and rows["groups"] == 300
    assert (grouped["hi"] - grouped["lo"]) > 2.5 * (rows["hi"] - rows["lo"])
    assert (grouped["hi"] - grouped["lo"]) == pytest.approx(one_per_group["hi"] - one_per_group["lo"], rel=0.25)
    assert bootstrap_mean(v, groups, seed=0) == grouped  # deterministic for a seed


def test_difference_is_paired_and_verdicts_need_an_interval_excluding_zero():
    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, 3, n)
    good = np.full((n, 3), 0.2)
    good[np.arange(n), y] = 0.6
    uniform = np.full((n, 3), 1 / 3)
    d = log_loss_difference(y, good, uniform, seed=0)
    assert d["hi"] < 0 and verdict(d) == "a better"
    assert verdict(log_loss_difference(y, uniform, good, seed=0)) == "b better"
    same = log_loss_difference(y, good, good, seed=0)
    assert same["mean"] == 0 and verdict(same) == "not resolved at this size"
    # two nearly equal models: the separate intervals overlap, and so does the paired one -> no verdict
    tiny = softmax(np.log(good) + rng.normal(scale=0.01, size=good.shape))
    assert verdict(log_loss_difference(y, good, tiny, seed=0)) == "not resolved at this size"
    assert verdict({"mean": 0.1, "lo": float("nan"), "hi": float("nan")}) == "not resolved at this size"


def test_single_group_has_no_interval():
    ci = bootstrap_mean(np.ones(5), np.zeros(5))
    assert ci["mean"] == 1.0 and np.isnan(ci["lo"]) and np.isnan(ci["hi"])
