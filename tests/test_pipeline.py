"""End to end: `arena-kd all` on the smoke config (tiny random models) — every stage, the report, the submission."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd.common.config import StackingConfig, load_config
from arena_kd.common.keys import LABELS
from arena_kd.common.tables import format_table
from arena_kd.pipeline import hard_student_config, run_pipeline
from arena_kd.stacking.candidates import length_only_probs

ROOT = Path(__file__).resolve().parent.parent
TEST_ROWS = 96


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    work = base / "work"
    # the first and the last TEST_ROWS/2 rows of the sample's test split (the whole split costs minutes on CPU): both
    # sources (MT-Bench ids come first, HH-RLHF last), for the per-source report
    for name in ("test.csv", "test_labels.csv", "sample_submission.csv"):
        full = pd.read_csv(ROOT / "data/sample" / name)
        pd.concat([full.head(TEST_ROWS // 2), full.tail(TEST_ROWS // 2)]).to_csv(base / name, index=False)
    cfg = load_config(
        ROOT / "configs" / "smoke.yaml",
        [f"workdir={work}", f"data.test={base / 'test.csv'}", f"data.test_labels={base / 'test_labels.csv'}",
         f"data.sample_submission={base / 'sample_submission.csv'}",
         f"data.extra=[{base / 'test.csv'}]", "teachers.predict_extra=true", "teachers.nested=true",
         "student.predict_heldout=true"],
    )
    report = run_pipeline(cfg)
    return cfg, report


def test_pipeline_writes_every_artifact(smoke_run):
    cfg, _ = smoke_run
    w = cfg.workdir_path
    for rel in [
        "folds.csv",
        "teachers/soft_labels.parquet",
        "teachers/tiny-gemma2/oof.parquet",
        "teachers/tiny-llama/extra.parquet",
        "student/oof.parquet",
        "student/export/export.json",
        "stacking/stacker.json",
        "submission.csv",
        "report.md",
        "report.json",
        "report_logloss.png",
        "config.resolved.yaml",
    ]:
        assert (w / rel).is_file(), rel


def test_report_covers_every_stage_with_finite_numbers(smoke_run):
    cfg, report = smoke_run
    names = [r["stage"] for r in report["rows"]]
    for expected in ["uniform (1/3 each)", "class prior (train frequencies)", "length-only LightGBM",
                     "teacher tiny-gemma2", "teacher tiny-llama", "teacher ensemble",
                     "student, hard labels only (alpha=0), TTA", "student, distilled, TTA",
                     "stacker (before temperature)", "stacker + temperature", "submission.csv (final)"]:
        assert expected in names, expected
    for r in report["rows"]:
        assert r["log_loss"] is not None and np.isfinite(r["log_loss"]), r
        assert 0.0 <= r["accuracy"] <= 1.0
    uniform = next(r for r in report["rows"] if r["stage"].startswith("uniform"))
    assert uniform["log_loss"] == pytest.approx(np.log(3), abs=1e-9)
    stages = [s["stage"] for s in report["stages"]]
    assert stages[:2] == ["teachers", "distill"] and "submission" in stages
    assert all(s["seconds"] > 0 and s["peak_rss_mib"] > 0 for s in report["stages"])
    on_disk = json.loads((cfg.workdir_path / "report.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(report["rows"]))


def test_report_projects_each_goal_with_an_oof_twin_onto_the_test_split(smoke_run):
    """The projection rows (arena_kd.power_report): (b) vs the twin and vs the prior on the mix and each source, (c)
    on the mix, each with the test split's own rows and prompts of its scope and a finite chance."""
    cfg, report = smoke_run
    rows = report["resolving_power"]
    keys = {(r["goal"], r["what"], r["scope"]) for r in rows}
    goal_keys = {(g["goal"], g["what"], g["scope"]) for g in report["goals"]}
    assert keys <= goal_keys and {g for g, _, _ in keys} == {"b", "c"}
    scopes = {r["scope"] for r in rows if r["goal"] == "b"}
    assert scopes == {"all test rows", "source hh_harmless", "source mtbench_human"}
    for r in rows:
        assert 0.0 <= r["chance"] <= 1.0 and r["half_width"] > 0 and np.isfinite(r["expected"]), r
        line = next(g for g in report["goals"] if (g["goal"], g["what"], g["scope"]) == (r["goal"], r["what"],
                                                                                         r["scope"]))
        assert (r["test_rows"], r["test_prompts"], r["test_diff"]) == (line["rows"], line["prompts"], line["diff"])
    assert "Could the test split resolve it?" in (cfg.workdir_path / "report.md").read_text()


def test_submission_is_valid_and_in_sample_order(smoke_run):
    cfg, _ = smoke_run
    sub = pd.read_csv(cfg.workdir_path / "submission.csv", dtype={"id": str})
    sample = pd.read_csv(cfg.data.sample_submission, dtype={"id": str})
    assert len(sample) == TEST_ROWS
    assert sub["id"].tolist() == sample["id"].tolist()
    p = sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    assert np.isfinite(p).all() and (p > 0).all() and (p < 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)


def test_nested_soft_labels_are_measured(smoke_run):
    """teachers.nested: one soft-label file per student fold, covering exactly the rows outside it; the report
    gives the student OOF difference (plain vs nested) with its interval and the test difference through the stacker."""
    from arena_kd.common.io import read_keyed_table

    cfg, report = smoke_run
    folds = pd.read_csv(cfg.folds_path(), dtype={"id": str})
    for k in (0, 1):
        df, meta = read_keyed_table(cfg.workdir_path / "teachers" / f"soft_labels_nested{k}.parquet")
        assert set(df["id"]) == set(folds.loc[folds["fold"] != k, "id"]) and meta["nested_outer_fold"] == k
    assert (cfg.workdir_path / "ablation_nested_soft_labels" / "student" / "oof.parquet").is_file()
    held, _ = read_keyed_table(cfg.workdir_path / "student" / "heldout.parquet")
    assert len(held) == 1958 - cfg.data.max_rows
    assert set(held["provenance"]) == {"heldout"} and (held["fold"] == -1).all()
    assert not set(held["id"]) & set(folds["id"])
    stack_oof, _ = read_keyed_table(cfg.workdir_path / "stacking" / "oof.parquet")
    assert len(stack_oof) == 1958
    provenance = stack_oof["provenance"].value_counts().to_dict()
    assert provenance == {"heldout": 1958 - cfg.data.max_rows, "oof": cfg.data.max_rows}
    cmp = report["nested_oof"]
    assert cmp["lo"] <= cmp["diff"] <= cmp["hi"] and np.isfinite(cmp["plain"]) and np.isfinite(cmp["nested"])
    assert any(v["what"].startswith("nested teacher soft labels") for v in report["verdicts"])
    assert "Nested teacher soft labels" in (cfg.workdir_path / "report.md").read_text()


def test_hard_student_config_is_the_alpha0_ablation(tmp_path):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"workdir={tmp_path}"])
    hard = hard_student_config(cfg)
    assert hard.student.distill.alpha == 0.0
    assert hard.folds_path() == cfg.folds_path()
    assert hard.workdir_path != cfg.workdir_path
    assert hard.student.model == cfg.student.model


def test_nested_ablation_config_trains_the_other_soft_labels_oof_only(tmp_path):
    from arena_kd.pipeline import nested_ablation_config

    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"workdir={tmp_path}", "teachers.nested=true"])
    other = nested_ablation_config(cfg)
    assert other.student.distill.nested is True and cfg.student.distill.nested is False
    assert other.student.final == "none" and other.student.oof
    assert other.folds_path() == cfg.folds_path() and other.soft_labels_path() == cfg.soft_labels_path()
    assert other.workdir_path != cfg.workdir_path and other.student.model == cfg.student.model


def test_length_only_baseline_learns_the_longer_answer_wins_signal():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(600):
        la, lb = rng.integers(1, 80, size=2)
        label = 0 if la > lb + 5 else 1 if lb > la + 5 else 2
        rows.append({"id": str(i), "prompt": ["q"], "response_a": ["w " * la], "response_b": ["w " * lb],
                     "label": label})
    from arena_kd.data.schema import make_frame

    df = make_frame(rows)
    train, test = df.iloc[:450].reset_index(drop=True), df.iloc[450:].reset_index(drop=True)
    p = length_only_probs(train, test, StackingConfig(), seed=0)
    from arena_kd.common.metrics import log_loss

    y = test["label"].to_numpy(dtype=np.int64)
    assert log_loss(y, p) < 0.5 * np.log(3)
    # position-symmetric by construction: the swapped test set swaps the A/B columns
    from arena_kd.data.schema import swap_frame

    ps = length_only_probs(train, swap_frame(test), StackingConfig(), seed=0)
    np.testing.assert_allclose(ps[:, [1, 0, 2]], p, atol=1e-9)


def test_format_table_marks_missing_values():
    text = format_table([{"stage": "x", "log_loss": None, "lo": None, "hi": None, "accuracy": None,
                          "note": "no test predictions"}])
    assert "| x | — | — | — | no test predictions |" in text


def test_report_states_intervals_verdicts_and_per_source_results(smoke_run):
    """Every stage has a prompt-bootstrap interval; verdicts only where the paired interval excludes zero; the
    per-source table has uniform, the class prior and the source's own prior for each source of the test labels."""
    cfg, report = smoke_run
    for r in report["rows"]:
        assert r["lo"] <= r["log_loss"] <= r["hi"] or r["stage"].startswith("uniform"), r
    assert report["verdicts"]
    for v in report["verdicts"]:
        if v["answer"] == "yes":
            assert v["hi"] < 0
        elif v["answer"] == "NO":
            assert v["lo"] > 0
        else:
            assert v["answer"] == "not resolved at this size" and v["lo"] <= 0 <= v["hi"]
    scopes = {v["scope"] for v in report["verdicts"]}
    assert {"source hh_harmless", "source mtbench_human"} <= scopes
    per = {(r["source"], r["stage"]) for r in report["per_source"]}
    for src in ("hh_harmless", "mtbench_human"):
        for stage in ("uniform (1/3 each)", "class prior (train frequencies)", "class prior of this source (oracle)",
                      "length-only LightGBM", "submission.csv (final)"):
            assert (src, stage) in per, (src, stage)
    assert set(report["selection"]) >= {"tta", "single", "none"}
    text = (cfg.workdir_path / "report.md").read_text()
    assert "### Per source" in text and "95% interval" in text and "student mode `tta`" in text
    # every learned stage against its own mean per source; uniform and the prior are no learned stage
    signal = {(r["source"], r["stage"]): r for r in report["row_signal"]}
    assert ("mtbench_human", "submission.csv (final)") in signal and ("hh_harmless", "teacher ensemble") in signal
    assert not {s for _, s in signal} & {"uniform (1/3 each)", "class prior (train frequencies)"}
    for r in signal.values():
        assert r["vs"]["answer"] in ("yes", "NO", "not resolved at this size")
    assert "rank the rows" in text and "minus its own mean" in text


# submission on the real smoke artifacts (no fakes): swap symmetry, tiny budget, broken student


def _probs(path):
    return pd.read_csv(path, dtype={"id": str}).set_index("id")


def test_smoke_submission_valid_and_swap_symmetric(smoke_run, tmp_path):
    smoke, _ = smoke_run
    from arena_kd.submission.run import run_submission

    res = run_submission(smoke, out=str(tmp_path / "a.csv"), progress=False)
    assert res.counts == {"stacker+tta": TEST_ROWS}
    # paths.csv names the candidate the stacker routed each row to (the out-of-fold winner for TTA rows)
    selection = json.loads((smoke.workdir_path / "stacking" / "stacker.json").read_text())["selection"]
    paths = pd.read_csv(tmp_path / "a.paths.csv", dtype=str, keep_default_na=False)
    assert set(paths["model"]) == {selection["tta"]}
    a = _probs(tmp_path / "a.csv")
    assert a.index.tolist() == pd.read_csv(smoke.data.sample_submission, dtype={"id": str})["id"].tolist()
    p = a[list(LABELS)].to_numpy()
    assert np.isfinite(p).all() and (p > 0).all() and (p < 1).all() and np.allclose(p.sum(1), 1)
    test = pd.read_csv(smoke.data.test)
    swapped = test.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    swapped.to_csv(tmp_path / "test.csv", index=False)
    run_submission(smoke, test=str(tmp_path / "test.csv"), out=str(tmp_path / "b.csv"), progress=False)
    b = _probs(tmp_path / "b.csv").loc[a.index]
    assert np.abs(a[LABELS[0]].to_numpy() - b[LABELS[1]].to_numpy()).mean() < 0.02
    assert np.abs(a[LABELS[2]].to_numpy() - b[LABELS[2]].to_numpy()).mean() < 0.02


def test_smoke_tiny_budget_and_broken_student(smoke_run, tmp_path):
    smoke, _ = smoke_run
    from arena_kd.submission.run import run_submission

    res = run_submission(smoke, out=str(tmp_path / "c.csv"), time_budget="1s", progress=False)
    assert res.counts == {"features_only+none": TEST_ROWS}
    broken = tmp_path / "export"
    shutil.copytree(smoke.workdir_path / "student/export", broken)
    (broken / "model" / "config.json").write_text("{not json")
    cfg = smoke.model_copy(deep=True)
    cfg.submission.student_dir = str(broken)
    res = run_submission(cfg, out=str(tmp_path / "d.csv"), progress=False)
    assert res.counts == {"features_only+none": TEST_ROWS}
    assert len(_probs(tmp_path / "d.csv")) == TEST_ROWS
