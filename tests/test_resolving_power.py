"""The report's projection of each goal onto the test split (common.resolving_power, arena_kd.power_report): variance
components recovered from clustered rows, the projected standard error against repeated splits and against the
report's own cluster bootstrap, hand values, and the rows the report builds from goal lines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from arena_kd.common.metrics import bootstrap_mean
from arena_kd.common.resolving_power import Components, project, variance_components
from arena_kd.heldout import DISTILLED, HARD, PRIOR, Evaluation
from arena_kd.power_report import power_section, projections


def _clustered(rng, groups: int, size: int, mean: float, between_sd: float, within_sd: float):
    g = np.repeat(np.arange(groups), size)
    return mean + rng.normal(0, between_sd, groups)[g] + rng.normal(0, within_sd, groups * size), g


def test_variance_components_recover_the_between_and_within_parts():
    rng = np.random.default_rng(0)
    v, g = _clustered(rng, 1000, 10, -0.02, 0.2, 0.5)
    c = variance_components(v, g)
    assert c.between == pytest.approx(0.04, rel=0.2)
    assert c.within == pytest.approx(0.25, rel=0.05)
    assert (c.rows, c.groups) == (10000, 1000)
    assert c.mean == pytest.approx(v.mean())


def test_unequal_group_sizes_still_recover_the_parts():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 30, 300)
    g = np.repeat(np.arange(300), sizes)
    v = rng.normal(0, 0.3, 300)[g] + rng.normal(0, 0.6, len(g))
    c = variance_components(v, g)
    assert c.between == pytest.approx(0.09, rel=0.25)
    assert c.within == pytest.approx(0.36, rel=0.05)


def test_one_row_per_group_counts_every_bit_of_spread_per_row_and_one_group_leaves_between_unknown():
    v = np.array([0.0, 1.0, 2.0, 3.0])
    c = variance_components(v, np.arange(4))
    assert (c.between, c.within) == (0.0, pytest.approx(np.var(v, ddof=1)))
    one = variance_components(v, np.zeros(4))
    assert math.isnan(one.between) and one.within == pytest.approx(np.var(v, ddof=1))
    assert math.isnan(project([(one, 4, 1)]).chance)
    with pytest.raises(ValueError, match="at least 2 rows"):
        variance_components(np.array([1.0]), np.array([0]))


def test_projection_hand_values():
    c = Components(mean=-0.1, between=0.01, within=0.25, rows=1000, groups=50)
    p = project([(c, 100, 10)])
    se = math.sqrt(0.01 / 10 + 0.25 / 100)  # 0.05916
    assert p.se == pytest.approx(se)
    assert p.half_width == pytest.approx(1.959964 * se, rel=1e-5)
    assert p.chance == pytest.approx(norm.cdf(0.1 / se - 1.959964), rel=1e-5)  # 0.394
    assert p.scale_for_80 == pytest.approx(((1.959964 + 0.841621) * se / 0.1) ** 2, rel=1e-5)  # 2.747
    # a split that many times larger (rows and prompts alike, rounded) has an 80% chance
    scaled = project([(c, round(100 * p.scale_for_80), round(10 * p.scale_for_80))])
    assert scaled.chance == pytest.approx(0.80, abs=0.02)
    none = project([(Components(0.0, 0.01, 0.25, 100, 10), 100, 10)])
    assert none.chance == pytest.approx(norm.cdf(-1.959964), rel=1e-4) and math.isinf(none.scale_for_80)


def test_a_mix_weighs_each_source_by_its_share_of_the_rows():
    hh = Components(mean=-0.03, between=0.0, within=0.03, rows=1000, groups=1000)
    mt = Components(mean=+0.01, between=0.05, within=0.2, rows=900, groups=40)
    p = project([(hh, 300, 300), (mt, 200, 10)])
    assert p.expected == pytest.approx(0.6 * -0.03 + 0.4 * 0.01)
    assert p.se ** 2 == pytest.approx(0.36 * 0.03 / 300 + 0.16 * (0.05 / 10 + 0.2 / 200))
    assert (p.rows, p.groups) == (500, 310)


def test_projected_se_matches_repeated_splits_and_the_reports_cluster_bootstrap():
    """The property the report leans on: the projected half-width is what the report's bootstrap interval measures on
    a split of that shape, and the projected SE is the spread of the mean over fresh splits."""
    rng = np.random.default_rng(2)
    between_sd, within_sd = 0.15, 0.5
    big, gb = _clustered(rng, 300, 20, 0.0, between_sd, within_sd)
    p = project([(variance_components(big, gb), 180, 9)])
    means, halves = [], []
    for _ in range(300):
        v, g = _clustered(rng, 9, 20, 0.0, between_sd, within_sd)
        means.append(v.mean())
    for _ in range(20):
        v, g = _clustered(rng, 9, 20, 0.0, between_sd, within_sd)
        b = bootstrap_mean(v, g, draws=2000, seed=0)
        halves.append((b["hi"] - b["lo"]) / 2)
    assert p.se == pytest.approx(np.std(means), rel=0.15)
    # the percentile bootstrap over 9 groups runs a little narrow (it divides by 9, not 8): within 25%
    assert np.mean(halves) == pytest.approx(p.half_width, rel=0.25)


def _ev() -> Evaluation:
    sources = np.array(["hh"] * 6 + ["mt"] * 4, dtype=object)
    groups = np.array([0, 1, 2, 3, 4, 5, 6, 6, 7, 7])  # hh: one prompt per row; mt: 2 prompts of 2 rows
    return Evaluation(labels=np.zeros(10, dtype=int), groups=groups, sources=sources, seed=0)


def _line(a: str, b: str, scope: str, goal: str = "b") -> dict:
    return {"goal": goal, "what": f"{a} beats {b}", "scope": scope, "a": a, "b": b, "diff": -0.01, "lo": -0.02,
            "hi": 0.0, "answer": "not resolved at this size", "rows": 10, "prompts": 8}


def test_report_rows_project_each_goal_line_onto_the_test_splits_rows_and_prompts_of_its_scope():
    rng = np.random.default_rng(3)
    hh, ghh = rng.normal(-0.03, 0.1, 500), np.arange(500)
    mt, gmt = _clustered(rng, 40, 20, +0.01, 0.1, 0.4)
    d = np.concatenate([hh, mt])
    groups = np.concatenate([ghh, gmt + 10_000])
    src = np.array(["hh"] * 500 + ["mt"] * 800, dtype=object)
    diffs = {(DISTILLED, HARD): (d, groups, src)}
    lines = [_line(DISTILLED, HARD, "all test rows"), _line(DISTILLED, HARD, "source hh"),
             _line(DISTILLED, HARD, "source mt"), _line(DISTILLED, PRIOR, "all test rows")]
    rows = {r["scope"]: r for r in projections(lines, _ev(), diffs)}
    assert set(rows) == {"all test rows", "source hh", "source mt"}  # no OOF twin for the prior line: no row
    assert (rows["source mt"]["test_rows"], rows["source mt"]["test_prompts"]) == (4, 2)
    assert (rows["source hh"]["test_rows"], rows["source hh"]["test_prompts"]) == (6, 6)
    assert rows["source mt"]["expected"] == pytest.approx(mt.mean())
    assert rows["source mt"]["oof_rows"] == 800
    # the mix is projected source by source with the test split's shares (6 hh, 4 mt), not the OOF rows' shares
    assert rows["all test rows"]["expected"] == pytest.approx(0.6 * hh.mean() + 0.4 * mt.mean())
    assert rows["all test rows"]["oof_diff"] == pytest.approx(d.mean())
    assert rows["all test rows"]["test_answer"] == "not resolved at this size"
    text = power_section(list(rows.values()))
    assert "| source mt | " in text and "4 (2)" in text and "Could the test split resolve it?" in text


def test_oof_rows_without_sources_project_the_mix_as_one():
    rng = np.random.default_rng(4)
    d = rng.normal(-0.05, 0.2, 300)
    rows = projections([_line(DISTILLED, HARD, "all test rows")], _ev(),
                       {(DISTILLED, HARD): (d, np.arange(300), None)})
    assert len(rows) == 1 and rows[0]["expected"] == pytest.approx(d.mean())
    assert (rows[0]["test_rows"], rows[0]["test_prompts"]) == (10, 8)


def test_a_scope_the_oof_rows_cannot_measure_gets_no_row():
    rng = np.random.default_rng(5)
    d = rng.normal(-0.05, 0.2, 300)
    only_hh = (d, np.arange(300), np.array(["hh"] * 300, dtype=object))
    rows = projections([_line(DISTILLED, HARD, "source mt"), _line(DISTILLED, HARD, "all test rows")], _ev(),
                       {(DISTILLED, HARD): only_hh})
    # no OOF row of mt: no mt line; the mix falls back to one part (the OOF rows lack a test source)
    assert [r["scope"] for r in rows] == ["all test rows"]
    assert rows[0]["expected"] == pytest.approx(d.mean())
