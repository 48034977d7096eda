"""arena_kd.stacking.run + arena_kd.blend.stacker: `arena-kd stack` on the smoke config with a fake student OOF, resume,
features-only fallback, the Stacker API the submission uses, report files and one-line user errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd.blend.features import swap_student
from arena_kd.blend.stacker import load_stacker
from arena_kd.common.config import load_config
from arena_kd.common.errors import UserError
from arena_kd.common.io import read_keyed_table, write_keyed_table
from arena_kd.data.schema import swap_frame
from arena_kd.stacking.report import stage_rows
from arena_kd.stacking.run import run_stacking

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _cfg(tmp_path, *sets):
    return load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "data.max_rows=160", "stacking.num_boost_round=40",
                               *sets])


def _training_frame(cfg):
    from arena_kd.kfold.training_data import load_training_data

    return load_training_data(cfg).frame


def _fake_student(frame: pd.DataFrame, seed: int = 0) -> dict:
    """Logits that know the label a little, with a position bias on the original orientation."""
    rng = np.random.default_rng(seed)
    y = frame["label"].astype(int).to_numpy()
    z = rng.normal(size=(len(frame), 3))
    z[np.arange(len(frame)), y] += 1.2
    orig = z + np.array([0.3, 0.0, 0.0])
    swap = z + rng.normal(scale=0.3, size=z.shape)
    return {"orig": orig, "swap": swap}


def _write_student_oof(cfg, frame, student) -> Path:
    oof = pd.DataFrame({"id": frame["id"], "fold": frame["fold"]})
    avg = (student["orig"] + student["swap"]) / 2
    for i, c in enumerate(("a", "b", "tie")):
        oof[f"logit_{c}"] = avg[:, i]
        oof[f"orig_logit_{c}"] = student["orig"][:, i]
        oof[f"swap_logit_{c}"] = student["swap"][:, i]
    path = cfg.workdir_path / "student" / "oof.parquet"
    write_keyed_table(path, oof, {"fake": True})
    return path


def _soft_uniform(cfg, frame):
    soft = pd.DataFrame({"id": frame["id"]})
    for i, c in enumerate(("a", "b", "tie")):
        soft[f"logit_{c}"] = np.log(np.full(len(frame), 1 / 3))
    write_keyed_table(cfg.workdir_path / "teachers" / "soft_labels.parquet", soft, {})


def test_run_stacking_with_student_resume_and_predict(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    frame = _training_frame(cfg)
    student = _fake_student(frame)
    _write_student_oof(cfg, frame, student)
    _soft_uniform(cfg, frame)
    manifest = run_stacking(cfg)
    out = cfg.workdir_path / "stacking"
    printed = capsys.readouterr().out
    assert "| stacker (student TTA + features) |" in printed and "| teacher ensemble OOF |" in printed
    for name in ("stacker_full.txt", "stacker_fold0.txt", "stacker_fold1.txt", "stacker_single_full.txt",
                 "features_only_full.txt", "length_only_full.txt", "oof.parquet", "report.md",
                 "reliability_stacker.png", "importance_stacker.png", "config.resolved.yaml", "tfidf.json"):
        assert (out / name).is_file(), name
    models = manifest["models"]
    assert models["stacker"]["features"] and not any(c.startswith("stu_") for c in models["features_only"]["features"])
    lengths = {f"{p}_{u}" for p in ("a", "b", "diff", "ratio") for u in ("chars", "words", "tokens", "newlines")}
    assert set(models["length_only"]["features"]) <= {"p_chars", "p_words"} | lengths
    assert set(manifest["selection"]) == {"tta", "single", "none", "short"}
    fit = models["stacker"]["temperature_fit"]  # stacker.json: the one source of the temperatures (issue 22)
    assert fit["log_loss_after"] <= fit["log_loss_before"] and fit["temperature"] == models["stacker"]["temperature"]
    assert not (out / "temperature.json").exists()

    oof, _ = read_keyed_table(out / "oof.parquet")
    assert len(oof) == len(frame) and not oof.filter(like="stacker_").isna().any().any()
    assert set(oof["provenance"]) == {"oof"} and oof["in_llm_rows"].all()
    rows = {r["stage"]: r for r in stage_rows(cfg.workdir_path)}
    assert rows["teacher ensemble OOF"]["log_loss"] == pytest.approx(np.log(3))
    assert rows["stacker (student TTA + features)"]["log_loss"] < np.log(3)
    assert all(r["lo"] <= r["log_loss"] <= r["hi"] for r in rows.values() if r["stage"] != "uniform (1/3 each)")
    report = (out / "report.md").read_text()
    assert "Reliability diagram" in report and "## Selection" in report and "## Per source" in report

    # resume: unchanged inputs -> nothing retrained
    mtime = (out / "stacker_full.txt").stat().st_mtime_ns
    run_stacking(cfg)
    assert "up to date" in capsys.readouterr().out
    assert (out / "stacker_full.txt").stat().st_mtime_ns == mtime

    # the submission API: calibrated, swap-symmetric, reloads to identical predictions, routed by the selection
    stacker = load_stacker(out)
    test = frame.head(30).reset_index(drop=True)
    st = {"orig": student["orig"][:30], "swap": student["swap"][:30]}
    p = stacker.predict(test, st)
    assert p.shape == (30, 3) and np.allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p, stacker.predict_model(test, manifest["selection"]["tta"], st))
    np.testing.assert_allclose(stacker.predict(swap_frame(test), swap_student(st)), p[:, [1, 0, 2]], atol=1e-6)
    np.testing.assert_array_equal(load_stacker(out).predict(test, st), p)
    from arena_kd.blend.temperature import apply_temperature

    raw = stacker.predict_model(test, "stacker", st, calibrate=False)
    np.testing.assert_allclose(apply_temperature(raw, models["stacker"]["temperature"]),
                               stacker.predict_model(test, "stacker", st), rtol=1e-12)
    fo = stacker.predict_features_only(test)
    np.testing.assert_array_equal(stacker.predict(test, None), fo)
    np.testing.assert_allclose(fo, stacker.predict_model(test, manifest["selection"]["none"]))
    np.testing.assert_allclose(stacker.predict_features_only(swap_frame(test)), fo[:, [1, 0, 2]], atol=1e-6)

    # a changed student OOF invalidates the outputs
    _write_student_oof(cfg, frame, _fake_student(frame, seed=1))
    run_stacking(cfg)
    assert "up to date" not in capsys.readouterr().out
    assert (out / "stacker_full.txt").stat().st_mtime_ns != mtime


def test_stacker_folds_of_its_own_split_whole_prompts_and_change_only_the_stacker(tmp_path, capsys):
    """stacking.n_folds: the stacker cross-fits on k folds of its own (grouped by prompt) over the student's OOF rows,
    not on the LLM stages' 2; a fold booster per fold, every row scored once, and the run says so."""
    from arena_kd.data.folds import prompt_groups

    cfg = _cfg(tmp_path, "stacking.n_folds=4")
    frame = _training_frame(cfg)
    _write_student_oof(cfg, frame, _fake_student(frame))
    _soft_uniform(cfg, frame)
    manifest = run_stacking(cfg)
    assert "stacker folds: 4 (stacking.n_folds" in capsys.readouterr().out
    out = cfg.workdir_path / "stacking"
    oof, _ = read_keyed_table(out / "oof.parquet")
    assert sorted(oof["fold"].unique()) == [0, 1, 2, 3] and cfg.folds.n_folds == 2
    assert not oof.filter(like="stacker_").isna().any().any()
    rows = frame.set_index(frame["id"].astype(str)).loc[oof["id"].astype(str)]
    per_prompt = pd.Series(oof["fold"].to_numpy()).groupby(prompt_groups(rows)).nunique()
    assert (per_prompt == 1).all()  # a prompt never spans two stacker folds
    assert len(manifest["models"]["stacker"]["fold_files"]) == 4
    assert all((out / f"stacker_fold{k}.txt").is_file() for k in range(4))


def test_selection_picks_the_lowest_oof_log_loss_and_the_submission_uses_it(tmp_path):
    """A strong student makes a student candidate win; a pure-noise student must never be chosen over the
    candidates that need no student (the stacker never loses to its own baselines out of fold)."""
    cfg = _cfg(tmp_path)
    frame = _training_frame(cfg)
    y = frame["label"].astype(int).to_numpy()
    strong = np.full((len(frame), 3), -3.0)
    strong[np.arange(len(frame)), y] = 3.0
    _write_student_oof(cfg, frame, {"orig": strong, "swap": strong[:, [1, 0, 2]] * 0 + strong})
    m = run_stacking(cfg)
    assert m["selection"]["tta"] in ("stacker", "student")
    best = min(m["candidates"]["tta"], key=lambda r: r["log_loss"])
    assert best["name"] == m["selection"]["tta"] and best["log_loss"] < 0.2

    noise = np.random.default_rng(5).normal(scale=4.0, size=(len(frame), 3))
    _write_student_oof(cfg, frame, {"orig": noise, "swap": noise[:, [1, 0, 2]]})
    m = run_stacking(cfg)
    assert m["selection"]["tta"] != "student" and m["selection"]["none"] in ("features_only", "length_only", "prior")
    lowest = run_stacking(_cfg(tmp_path, "stacking.select_rule=lowest"), force=True)
    table = {r["name"]: r["log_loss"] for r in lowest["candidates"]["tta"]}
    assert table[lowest["selection"]["tta"]] == min(table.values())
    assert lowest["selection"]["tta"] != "student" and table["student"] > table["prior"]
    assert table[lowest["selection"]["tta"]] <= min(table["length_only"], table["prior"])

    # stacking.select=false keeps the full stacker whatever the OOF says
    cfg2 = _cfg(tmp_path, "stacking.select=false")
    assert run_stacking(cfg2, force=True)["selection"]["tta"] == "stacker"


def test_heldout_rows_reach_the_stacker_with_their_provenance(tmp_path):
    """Rows beyond data.max_rows, predicted by the fold students' mean (student/heldout.parquet), train the stacker;
    oof.parquet says which rows are which, and a prompt never spans two stacker folds."""
    from arena_kd.data.folds import prompt_groups
    from arena_kd.kfold.training_data import load_training_data

    cfg = _cfg(tmp_path)
    data = load_training_data(cfg)
    assert len(data.heldout) == 1958 - 160 and not set(data.heldout["id"]) & set(data.frame["id"])
    frame = data.frame
    _write_student_oof(cfg, frame, _fake_student(frame))
    held = data.heldout.assign(fold=-1)
    hs = _fake_student(held, seed=3)
    path = _write_student_oof(cfg, held, hs)
    path.rename(path.with_name("heldout.parquet"))
    path.with_name("oof.meta.json").rename(path.with_name("heldout.meta.json"))
    _write_student_oof(cfg, frame, _fake_student(frame))
    m = run_stacking(cfg)
    assert m["rows"] == 1958 and m["provenance"] == {"oof": 160, "heldout": 1798}
    oof, _ = read_keyed_table(cfg.workdir_path / "stacking" / "oof.parquet")
    prov = dict(zip(oof["id"], oof["provenance"]))
    assert all(prov[i] == "oof" for i in frame["id"]) and all(prov[i] == "heldout" for i in held["id"])
    assert (oof["in_llm_rows"] == (oof["provenance"] == "oof")).all()
    sub = oof[oof["provenance"] == "oof"].set_index("id")["fold"]
    assert (sub.loc[frame["id"]].to_numpy() == frame["fold"].to_numpy()).all()  # LLM rows keep their folds
    every_row = pd.concat([frame, data.heldout], ignore_index=True)
    groups = prompt_groups(every_row.set_index("id").loc[oof["id"]].reset_index())
    assert (pd.Series(oof["fold"].to_numpy()).groupby(groups).nunique() == 1).all()
    assert set(oof["fold"]) == {0, 1}
    report = (cfg.workdir_path / "stacking" / "report.md").read_text()
    assert "## Per provenance" in report and "heldout" in report


def test_student_without_tta_trains_single_orientation_stackers(tmp_path):
    """student.predict.tta=false: swap logits are NaN in the OOF; stacking works and the submission's rows without
    TTA are scored by a stacker trained on one-orientation input; short rows go to the no-student winner."""
    cfg = _cfg(tmp_path)
    frame = _training_frame(cfg)
    st = _fake_student(frame)
    _write_student_oof(cfg, frame, {"orig": st["orig"], "swap": np.full_like(st["orig"], np.nan)})
    m = run_stacking(cfg)
    assert m["models"]["stacker"] is None and m["models"]["stacker_single"]["student_input"] == "single"
    assert "tta" not in m["selection"]
    assert m["selection"]["single"] in ("stacker_single", "log_pool_single", "features_only", "student_single",
                                        "length_only", "prior")
    stacker = load_stacker(cfg.workdir_path / "stacking")
    test = frame.head(20).reset_index(drop=True)
    one = {"orig": st["orig"][:20], "swap": None}
    p = stacker.predict(test, one)
    np.testing.assert_allclose(p, stacker.predict_model(test, m["selection"]["single"], one))
    # a TTA row at test time still gets the single-orientation model (the only kind trained)
    np.testing.assert_allclose(stacker.predict(test, {"orig": st["orig"][:20], "swap": st["swap"][:20]}), p)
    # rows the student saw at a shorter max length: routed to the no-student winner
    m_json = json.loads((cfg.workdir_path / "stacking" / "stacker.json").read_text())
    m_json["student_max_length"] = 96
    (cfg.workdir_path / "stacking" / "stacker.json").write_text(json.dumps(m_json))
    stacker = load_stacker(cfg.workdir_path / "stacking")
    lens = np.where(np.arange(20) < 5, 48, 96)
    q = stacker.predict(test, {**one, "max_length": lens})
    np.testing.assert_allclose(q[:5], stacker.predict_features_only(test.head(5)))
    np.testing.assert_allclose(q[5:], p[5:])


def test_run_stacking_without_student_trains_the_no_student_candidates(tmp_path, capsys):
    cfg = _cfg(tmp_path, "stacking.calibrate=false")
    manifest = run_stacking(cfg)
    assert "no student OOF" in capsys.readouterr().out
    assert manifest["models"]["stacker"] is None and manifest["rows"] == 1958  # every labelled row
    out = cfg.workdir_path / "stacking"
    assert (out / "features_only_full.txt").is_file() and not (out / "stacker_full.txt").exists()
    assert manifest["models"]["features_only"]["temperature"] == 1.0
    stacker = load_stacker(out)
    frame = _training_frame(cfg).head(10).reset_index(drop=True)
    p = stacker.predict(frame, _fake_student(frame))  # no student model: the no-student winner
    np.testing.assert_array_equal(p, stacker.predict_features_only(frame))


def test_stacking_disabled_calibrates_the_student(tmp_path):
    cfg = _cfg(tmp_path, "stacking.enabled=false", "stacking.select=false")
    frame = _training_frame(cfg)
    student = _fake_student(frame)
    _write_student_oof(cfg, frame, student)
    manifest = run_stacking(cfg)
    assert manifest["models"]["stacker"]["kind"] == "student_only"
    stacker = load_stacker(cfg.workdir_path / "stacking")
    p = stacker.predict(frame.head(5), {"orig": student["orig"][:5], "swap": student["swap"][:5]})
    assert p.shape == (5, 3) and np.allclose(p.sum(1), 1.0)


def test_bad_student_oof_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from arena_kd import cli

    cfg = _cfg(tmp_path)
    frame = _training_frame(cfg)
    path = cfg.workdir_path / "student" / "oof.parquet"
    write_keyed_table(path, pd.DataFrame({"id": frame["id"], "fold": frame["fold"], "score": 0.0}), {})
    with pytest.raises(UserError, match="oof.parquet: student OOF needs columns"):
        run_stacking(cfg)
    monkeypatch.setattr(sys, "argv", ["arena-kd", "stack", "--config", str(SMOKE),
                                      "--set", f"workdir={tmp_path / 'work'}", "--set", "data.max_rows=160"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "student OOF needs columns" in err[0]


def test_load_stacker_missing_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="stacker not found"):
        load_stacker(tmp_path / "nope")
