"""Issue 21 item 7: the report's per-source table (every stage against uniform, the class prior and the source's own
constant, with 'does it beat its own constant?' from the paired interval) and the training curves it links."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd.common.config import load_config
from arena_kd.common.tables import format_table
from arena_kd.heldout import Evaluation
from arena_kd.report import OWN_CONSTANT, per_source, write_report, write_training_curves

ROOT = Path(__file__).resolve().parents[1]


def _evaluation() -> Evaluation:
    # training rows: hh labels 0,1,0,1,0,1 (no ties); mt labels 0,1,2,2
    train = pd.DataFrame({"label": [0, 1, 0, 1, 0, 1, 0, 1, 2, 2], "source": ["hh"] * 6 + ["mt"] * 4})
    # test rows: hh 0,1,0,1 ; mt 0,2,1 — every row its own prompt group
    y = np.array([0, 1, 0, 1, 0, 2, 1])
    ev = Evaluation(labels=y, groups=np.arange(7), sources=np.array(["hh"] * 4 + ["mt"] * 3, dtype=object),
                    train=train)
    ev.add("uniform (1/3 each)", np.full((7, 3), 1 / 3))
    ev.add("class prior (train frequencies)", np.tile([5 / 13, 5 / 13, 3 / 13], (7, 1)))  # pooled (4,4,2) + 1
    model = np.vstack([np.tile([0.5, 0.5, 0.0], (4, 1)), np.full((3, 3), 1 / 3)])  # hh: no ties; mt: uniform
    ev.add("model", model)
    return ev


def test_per_source_rows_against_the_sources_own_constant_hand_values():
    rows = {(r["source"], r["stage"]): r for r in per_source(_evaluation())}
    # own constants, A/B pooled + 1 smoothing: hh (3,3,0) -> (4,4,1)/9; mt (1,1,2) -> (2,2,3)/7
    assert rows["hh", OWN_CONSTANT]["log_loss"] == pytest.approx(math.log(9 / 4), abs=1e-9)  # 0.810930
    assert rows["mt", OWN_CONSTANT]["log_loss"] == pytest.approx((2 * math.log(7 / 2) + math.log(7 / 3)) / 3,
                                                                 abs=1e-9)  # 1.117608
    assert "vs" not in rows["hh", OWN_CONSTANT]
    assert rows["hh", "uniform (1/3 each)"]["log_loss"] == pytest.approx(math.log(3), abs=1e-9)
    assert rows["hh", "class prior (train frequencies)"]["log_loss"] == pytest.approx(math.log(13 / 5), abs=1e-9)
    # hh: the model's ln 2 on every row beats the constant's ln(9/4) on every row: the interval is the point -0.117783
    hh = rows["hh", "model"]
    assert hh["log_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert hh["vs"]["diff"] == pytest.approx(math.log(2) - math.log(9 / 4), abs=1e-6)
    assert hh["vs"]["hi"] == pytest.approx(-0.117783, abs=1e-6) and hh["vs"]["answer"] == "yes"
    # the class prior does not know the source: it loses to hh's constant on every row (ln(13/5) > ln(9/4))
    assert rows["hh", "class prior (train frequencies)"]["vs"]["answer"] == "NO"
    # mt: uniform minus the constant is -0.154151 on the label-0 row, +0.251314 on the tie and -0.154151 on the
    # label-1 row: mean -0.018996, the interval straddles zero
    mt = rows["mt", "model"]["vs"]
    assert mt["diff"] == pytest.approx(math.log(3) - (2 * math.log(7 / 2) + math.log(7 / 3)) / 3, abs=1e-6)
    assert mt["lo"] < 0 < mt["hi"] and mt["answer"] == "not resolved at this size"


def test_per_source_table_shows_the_difference_its_interval_and_the_answer():
    text = format_table(per_source(_evaluation()), versus="own constant")
    head = text.splitlines()[0]
    assert head == ("| source | stage | log loss | 95% interval | accuracy | minus own constant | 95% interval | "
                    "beats it? | note |")
    assert "| hh | model | 0.6931 | [0.6931, 0.6931] | 0.500 | -0.1178 | [-0.1178, -0.1178] | yes |" in text
    assert f"| hh | {OWN_CONSTANT} | 0.8109 |" in text and "| — | — | — |" in text  # the baseline has no difference
    # without `versus` the table is the one every other report prints
    assert "minus" not in format_table(per_source(_evaluation())).splitlines()[0]


def _log(path: Path, steps: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(s) + "\n" for s in steps) + "{\"step\": 9, \"cut")  # a killed run's last line


def test_training_curves_written_next_to_each_stage_and_linked_from_the_report(tmp_path):
    work = tmp_path / "work"
    kd = [{"step": i, "loss": 1.0 / i, "loss_ce": 1.1 / i, "loss_kl": 0.1 / i} for i in range(1, 4)]
    _log(work / "student" / "fold0" / "metrics.jsonl", kd)
    _log(work / "student" / "final" / "run" / "metrics.jsonl", kd)
    _log(work / "teachers" / "t1" / "fold1" / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
    _log(work / "ablation_hard_student" / "student" / "final" / "run" / "metrics.jsonl",
         [{"step": 1, "train_runtime": 3.0}])  # no training step logged: no figure
    curves = dict(write_training_curves(work))
    assert curves == {"student": "student/training_curves.png", "teachers/t1": "teachers/t1/training_curves.png"}
    for png in curves.values():
        assert (work / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"workdir={work}"])
    report = write_report(cfg, None, [])
    text = (work / "report.md").read_text()
    assert "## Training curves" in text and "![training curves of student](student/training_curves.png)" in text
    assert report["training_curves"] == curves


def _goal_evaluation(hard_on_mt: float) -> Evaluation:
    """8 test rows (hh 4, mt 4), each its own prompt; every stage puts ``p`` on the true class, the rest split."""
    y = np.array([0, 1, 0, 1, 0, 1, 2, 2])
    ev = Evaluation(labels=y, groups=np.arange(8), sources=np.array(["hh"] * 4 + ["mt"] * 4, dtype=object))

    def on_truth(p):
        return np.array([p if k == t else (1 - p) / 2 for t in y for k in range(3)]).reshape(8, 3)

    ev.add("class prior (train frequencies)", np.tile([0.4, 0.4, 0.2], (8, 1)))
    ev.add("teacher gemma", on_truth(0.8))
    ev.add("student, distilled, TTA", on_truth(0.7))
    hard = on_truth(0.5)
    hard[4:] = on_truth(hard_on_mt)[4:]
    ev.add("student, hard labels only (alpha=0), TTA", hard)
    ev.add("stacker + temperature", on_truth(0.6))
    ev.add("stacker candidate using the student, chosen out of fold", on_truth(0.6))
    ev.add("features-only stacker + temperature (fallback)", on_truth(0.6))
    return ev


def test_goal_c_takes_the_student_candidate_with_the_lower_oof_log_loss():
    """(c) asks about the candidate using the student that the training rows' OOF prefers (LightGBM stacker or log
    pool), never the one the test rows prefer."""
    from types import SimpleNamespace

    from arena_kd.heldout import STACKER_LABELS, _student_stacker

    ev = _goal_evaluation(hard_on_mt=0.5)
    pool = np.tile([0.1, 0.1, 0.8], (8, 1))  # worse on these test rows than the stacker
    ev.add(STACKER_LABELS["log_pool"], pool)

    def fake(stacker_oof, pool_oof):
        rows = [{"name": "stacker", "log_loss": stacker_oof}, {"name": "log_pool", "log_loss": pool_oof}]
        return SimpleNamespace(manifest={"candidates": {"tta": rows}})

    name, note = _student_stacker(fake(0.85, 0.84), ev)
    assert name == "log_pool" and "OOF stacker 0.8500, log_pool 0.8400" in note
    assert _student_stacker(fake(0.83, 0.84), ev)[0] == "stacker"
    ev.add(STACKER_LABELS["log_pool"], None)  # a candidate that did not answer is not chosen
    assert _student_stacker(fake(0.85, 0.84), ev)[0] == "stacker"


def test_distillation_goals_resolve_only_when_every_line_is_resolved():
    """(a) teacher vs prior on the mix, (b) distilled vs hard and vs prior on the mix and each source, (c) on the mix:
    a goal is resolved only when each of its paired intervals is below zero."""
    from arena_kd.report import _goals_section, distillation_goals

    lines, answers = distillation_goals(_goal_evaluation(hard_on_mt=0.5))
    assert answers == {"a": "yes", "b": "yes", "c": "no"}  # (c): identical stackers, difference 0
    assert [(v["goal"], v["scope"]) for v in lines if v["goal"] == "b"] == [
        ("b", "all test rows"), ("b", "source hh"), ("b", "source mt")] * 2
    assert lines[0]["a"] == "teacher gemma"  # a single teacher stands in for the ensemble
    assert len(lines) == 1 + 6 + 1
    # the hard twin better than the distilled student on MT-Bench rows only: (b) is not resolved
    lines, answers = distillation_goals(_goal_evaluation(hard_on_mt=0.9))
    assert answers["b"] == "no" and answers["a"] == "yes"
    mt = [v for v in lines if v["goal"] == "b" and v["scope"] == "source mt" and v["b"].startswith("student, hard")]
    assert mt[0]["answer"] == "NO"
    text = _goals_section(lines, answers)
    assert "(a) **resolved**, (b) not resolved, (c) not resolved" in text and "make all-full" in text


def test_goal_lines_name_the_prompts_their_interval_resamples():
    """An interval over prompts is as wide as the prompts are few: each verdict line says how many there are (here
    the 4 MT-Bench rows are 2 questions, 2 turns each), beside its rows."""
    from arena_kd.report import _goals_section, distillation_goals

    ev = _goal_evaluation(hard_on_mt=0.5)
    ev.groups = np.array([0, 1, 2, 3, 4, 4, 5, 5])
    lines, answers = distillation_goals(ev)
    by_scope = {v["scope"]: (v["rows"], v["prompts"]) for v in lines if v["goal"] == "b"}
    assert by_scope == {"all test rows": (8, 6), "source hh": (4, 4), "source mt": (4, 2)}
    assert "(source mt, 4 rows, 2 prompts): **" in _goals_section(lines, answers)


def test_row_signal_pairs_each_learned_stage_against_its_own_mean_on_each_source():
    """A stage that ranks the rows beats its own mean prediction; a constant equals it; one whose variation is the
    wrong way round loses to it. Uniform and the class prior are not learned stages: no row."""
    rng = np.random.default_rng(0)
    n = 120
    y = rng.integers(0, 2, n)  # A or B, no ties
    right = np.where(y[:, None] == 0, [0.7, 0.25, 0.05], [0.25, 0.7, 0.05])
    ev = Evaluation(labels=y, groups=np.arange(n), sources=np.array(["hh"] * n, dtype=object), seed=0)
    ev.add("uniform (1/3 each)", np.full((n, 3), 1 / 3))
    ev.add("class prior (train frequencies)", np.tile([0.4, 0.4, 0.2], (n, 1)))
    ev.add("ranks", right)
    ev.add("constant", np.tile([0.45, 0.45, 0.1], (n, 1)))
    ev.add("backwards", right[:, [1, 0, 2]])
    rows = {r["stage"]: r for r in ev.row_signal(["uniform (1/3 each)", "class prior (train frequencies)"])}
    assert set(rows) == {"ranks", "constant", "backwards"}
    # its own mean is (0.475, 0.475, 0.05) for both varying stages, A/B pooled
    own = -np.log(0.475)
    assert rows["ranks"]["vs"]["diff"] == pytest.approx(-np.log(0.7) - own, abs=1e-9)
    assert rows["ranks"]["vs"]["answer"] == "yes"
    assert rows["backwards"]["vs"]["diff"] == pytest.approx(-np.log(0.25) - own, abs=1e-9)
    assert rows["backwards"]["vs"]["answer"] == "NO"
    assert rows["constant"]["vs"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert all(r["source"] == "hh" and r["rows"] == n for r in rows.values())
    table = format_table(list(rows.values()), versus="its own mean")
    assert "minus its own mean" in table and "| hh | ranks |" in table


def test_own_mean_is_the_models_class_mix_with_a_and_b_pooled():
    """The constant each stage's row signal is judged against (common.metrics.own_mean), by hand."""
    from arena_kd.common.metrics import own_mean

    p = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4]])
    m = own_mean(p)
    assert m.shape == p.shape and np.allclose(m[0], m[1])
    assert np.allclose(m[0], [0.35, 0.35, 0.3])  # ties: their mean 0.3; A and B: the mean of their means 0.4, 0.3
    sym = np.tile([0.4, 0.4, 0.2], (5, 1))
    assert np.array_equal(own_mean(sym), sym)  # a constant with no position preference is its own mean
