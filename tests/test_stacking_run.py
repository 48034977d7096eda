"""stacking.run + stacking.predict: `arena-kd stack` on the smoke config with a fake student OOF, resume,
features-only fallback, the Stacker API the submission uses, report files and one-line user errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd.config import load_config
from arena_kd.errors import UserError
from arena_kd.io import read_keyed_table, write_keyed_table
from data.schema import swap_frame
from stacking.features import swap_student
from stacking.predict import load_stacker
from stacking.report import stage_rows
from stacking.run import run_stacking

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _cfg(tmp_path, *sets):
    return load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "data.max_rows=160", "stacking.num_boost_round=40", *sets])


def _training_frame(cfg):
    from teachers.training_data import load_training_data

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


def test_run_stacking_with_student_resume_and_predict(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    frame = _training_frame(cfg)
    student = _fake_student(frame)
    _write_student_oof(cfg, frame, student)
    soft = pd.DataFrame({"id": frame["id"]})
    for i, c in enumerate(("a", "b", "tie")):
        soft[f"logit_{c}"] = np.log(np.full(len(frame), 1 / 3))
    write_keyed_table(cfg.workdir_path / "teachers" / "soft_labels.parquet", soft, {})
    manifest = run_stacking(cfg)
    out = cfg.workdir_path / "stacking"
    printed = capsys.readouterr().out
    assert "| stacker + temperature |" in printed and "| student + TTA (avg) |" in printed
    for name in ("stacker_full.txt", "stacker_fold0.txt", "stacker_fold1.txt", "features_only_full.txt", "temperature.json",
                 "oof.parquet", "report.md", "reliability_stacker.png", "importance_stacker.png", "config.resolved.yaml", "tfidf.json"):
        assert (out / name).is_file(), name
    assert manifest["models"]["stacker"]["features"] and not any(c.startswith("stu_") for c in manifest["models"]["features_only"]["features"])
    temps = json.loads((out / "temperature.json").read_text())
    assert temps["stacker"]["log_loss_after"] <= temps["stacker"]["log_loss_before"]

    oof, _ = read_keyed_table(out / "oof.parquet")
    assert len(oof) == len(frame) and not oof.filter(like="stacker_").isna().any().any()
    rows = {r["stage"]: r for r in stage_rows(cfg.workdir_path)}
    assert rows["teacher ensemble OOF"]["log_loss"] == pytest.approx(np.log(3))
    assert set(rows) == {"class prior (reference)", "teacher ensemble OOF", "student OOF (orig)", "student + TTA (avg)", "stacker", "stacker + temperature", "features-only", "features-only + temperature"}
    assert rows["stacker"]["log_loss"] < np.log(3) and rows["stacker + temperature"]["log_loss"] <= rows["stacker"]["log_loss"] + 1e-12
    assert "Reliability diagram" in (out / "report.md").read_text()

    # resume: unchanged inputs -> nothing retrained
    mtime = (out / "stacker_full.txt").stat().st_mtime_ns
    run_stacking(cfg)
    assert "up to date" in capsys.readouterr().out
    assert (out / "stacker_full.txt").stat().st_mtime_ns == mtime

    # the submission API: calibrated, swap-symmetric, reloads to identical predictions
    stacker = load_stacker(out)
    test = frame.head(30).reset_index(drop=True)
    st = {"orig": student["orig"][:30], "swap": student["swap"][:30]}
    p = stacker.predict(test, st)
    assert p.shape == (30, 3) and np.allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(stacker.predict(swap_frame(test), swap_student(st)), p[:, [1, 0, 2]], atol=1e-6)
    np.testing.assert_array_equal(load_stacker(out).predict(test, st), p)
    from stacking.calibration import apply_temperature

    raw = stacker.predict(test, st, calibrate=False)
    np.testing.assert_allclose(apply_temperature(raw, manifest["models"]["stacker"]["temperature"]), p, rtol=1e-12)
    fo = stacker.predict_features_only(test)
    np.testing.assert_array_equal(stacker.predict(test, None), fo)
    assert not np.allclose(fo, p)
    np.testing.assert_allclose(stacker.predict_features_only(swap_frame(test)), fo[:, [1, 0, 2]], atol=1e-6)

    # a changed student OOF invalidates the outputs
    _write_student_oof(cfg, frame, _fake_student(frame, seed=1))
    run_stacking(cfg)
    assert "up to date" not in capsys.readouterr().out
    assert (out / "stacker_full.txt").stat().st_mtime_ns != mtime


def test_run_stacking_without_student_trains_features_only(tmp_path, capsys):
    cfg = _cfg(tmp_path, "stacking.calibrate=false")
    manifest = run_stacking(cfg)
    assert "no student OOF" in capsys.readouterr().out
    assert manifest["models"]["stacker"] is None
    out = cfg.workdir_path / "stacking"
    assert (out / "features_only_full.txt").is_file() and not (out / "stacker_full.txt").exists()
    assert json.loads((out / "temperature.json").read_text())["features_only"]["temperature"] == 1.0
    stacker = load_stacker(out)
    frame = _training_frame(cfg).head(10).reset_index(drop=True)
    p = stacker.predict(frame, _fake_student(frame))  # no student model: falls back to features-only
    np.testing.assert_array_equal(p, stacker.predict_features_only(frame))


def test_stacking_disabled_calibrates_the_student(tmp_path):
    cfg = _cfg(tmp_path, "stacking.enabled=false")
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
    monkeypatch.setattr(sys, "argv", ["arena-kd", "stack", "--config", str(SMOKE), "--set", f"workdir={tmp_path / 'work'}",
                                      "--set", "data.max_rows=160"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "student OOF needs columns" in err[0]


def test_load_stacker_missing_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="stacker not found"):
        load_stacker(tmp_path / "nope")
