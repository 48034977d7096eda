"""The submission's choice between candidates (stacking.candidates.select): 'lowest' takes any out-of-fold lead,
'resolved' keeps the features-only stacker unless a candidate beats it with a paired 95% interval below zero."""

import numpy as np
import pytest

from arena_kd.common.metrics import log_loss, log_loss_difference
from arena_kd.stacking.candidates import SELECT_REFERENCE, select

N_GROUPS, PER_GROUP = 200, 3


def _probs(y: np.ndarray, p_true: np.ndarray) -> np.ndarray:
    """float64[n,3]: p_true on the labelled class, the rest split evenly."""
    p = np.repeat(((1 - p_true) / 2)[:, None], 3, axis=1)
    p[np.arange(len(y)), y] = p_true
    return p


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    n = N_GROUPS * PER_GROUP
    y = rng.integers(0, 3, n)
    groups = np.arange(n) // PER_GROUP
    ref = _probs(y, np.full(n, 0.5))
    # a lead that does not resolve: better by 0.18 on half the questions, worse by 0.17 on the other half
    even = (groups % 2 == 0)
    weak = _probs(y, np.where(even, 0.6, 0.42))
    strong = _probs(y, np.full(n, 0.7))  # better on every row
    prior = _probs(y, np.full(n, 1 / 3))
    return y, groups, {"features_only": ref, "prior": prior}, weak, strong


def test_an_unresolved_lead_keeps_the_reference_and_lowest_takes_it(rows):
    y, groups, base, weak, _ = rows
    oof = {**base, "student": weak}
    d = log_loss_difference(y, weak, base["features_only"], groups)
    assert d["mean"] < 0 < d["hi"]  # the premise: lower out of fold, interval across zero
    winners, tables = select(oof, y, groups, ["tta", "none"], rule="resolved")
    assert winners == {"tta": SELECT_REFERENCE, "none": SELECT_REFERENCE}
    assert [r["name"] for r in tables["tta"]][0] == "student"  # the table stays sorted by log loss
    assert tables["tta"][0]["diff_vs_winner"]["mean"] == pytest.approx(d["mean"])
    assert select(oof, y, groups, ["tta"], rule="lowest")[0]["tta"] == "student"


def test_a_resolved_lead_wins_under_both_rules(rows):
    y, groups, base, weak, strong = rows
    oof = {**base, "student": weak, "stacker": strong}
    for rule in ("resolved", "lowest"):
        assert select(oof, y, groups, ["tta"], rule=rule)[0]["tta"] == "stacker"
    # of several resolved leads the lowest wins
    oof["student"] = _probs(y, np.full(len(y), 0.8))
    assert log_loss(y, oof["student"]) < log_loss(y, strong)
    assert select(oof, y, groups, ["tta"], rule="resolved")[0]["tta"] == "student"


def test_worse_candidates_never_replace_the_reference_and_without_it_lowest_rules(rows):
    y, groups, base, weak, _ = rows
    assert select(base, y, groups, ["none"], rule="resolved")[0]["none"] == SELECT_REFERENCE
    no_ref = {"prior": base["prior"], "student": weak}
    assert select(no_ref, y, groups, ["tta"], rule="resolved")[0]["tta"] == "student"
    assert select({**base, "student": weak}, y, groups, ["tta"], enabled=False)[0]["tta"] == "features_only"
    with pytest.raises(ValueError, match="select rule"):
        select(base, y, groups, ["none"], rule="best")
