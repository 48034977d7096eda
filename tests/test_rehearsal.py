"""The dress rehearsal and what it rests on: layered configs, one temperature owner, verified student copies,
and a smaller `make rehearsal` end to end (real tiny models, `arena-kd package`, the notebook's cell, offline)."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml

from arena_kd.common.config import load_config, merge_layer
from arena_kd.common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT / "configs" / "kaggle-gemma2.yaml"
REHEARSAL = ROOT / "configs" / "rehearsal.yaml"


def test_override_file_changes_only_what_it_names():
    base = load_config(KAGGLE)
    cfg = load_config([KAGGLE, REHEARSAL])
    assert cfg.workdir == "runs/rehearsal/work" and cfg.folds.n_folds == 2
    # the recipe itself is untouched: quantization, dtype, LoRA, swaps, KD, soup, export, submission precision
    for t_base, t in zip(base.teachers.models, cfg.teachers.models):
        assert t.name == t_base.name and t.model.quantization == "4bit" and t.model.dtype == "bf16"
        assert t.model.lora == t_base.model.lora
        assert t.train.swap_augmentation == "both" and t.train.optim == "paged_adamw_8bit"
        assert t.model.backbone == "random"
    s, sb = cfg.student, base.student
    assert (s.model.quantization, s.model.lora, s.distill, s.final, s.soup, s.export_dtype) == \
        (sb.model.quantization, sb.model.lora, sb.distill, sb.final, sb.soup, sb.export_dtype)
    assert (cfg.submission.quantization, cfg.submission.dtype, cfg.submission.predict.tta) == ("8bit", "fp16", True)
    assert cfg.student.model.random_init["model_type"] == "gemma2"
    assert cfg.teachers.models[1].model.random_init["model_type"] == "llama"


def test_merge_layer_rules():
    base = {"a": {"x": 1, "y": [1, 2]}, "l": [{"n": "t1", "v": 1}, {"n": "t2", "v": 2}], "s": 3}
    out = merge_layer(base, {"a": {"y": [9]}, "l": [{"v": 5}], "s": None})
    assert out == {"a": {"x": 1, "y": [9]}, "l": [{"n": "t1", "v": 5}, {"n": "t2", "v": 2}], "s": None}
    assert base["l"][0]["v"] == 1  # the base is not modified


def test_layered_config_errors_name_every_file(tmp_path):
    bad = tmp_path / "over.yaml"
    bad.write_text("student: {soup: median}\n")
    with pytest.raises(UserError, match=r"kaggle-gemma2.yaml \+ .*over.yaml: student.soup"):
        load_config([KAGGLE, bad])
    with pytest.raises(UserError, match="config file not found"):
        load_config([KAGGLE, tmp_path / "missing.yaml"])


def test_cli_takes_repeated_config(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "arena_kd.cli", "plan", "--config", str(KAGGLE),
                        "--config", str(tmp_path / "nope.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "nope.yaml: config file not found" in r.stderr


def test_two_temperatures_are_refused_in_one_line():
    with pytest.raises(UserError, match="compound") as e:
        load_config(KAGGLE, ["teachers.combine.temperature=2", "student.distill.temperature=1.5"])
    assert "\n" not in str(e.value)
    assert "teachers.combine.temperature=2 and student.distill.temperature=1.5 compound" in str(e.value)
    load_config(KAGGLE, ["teachers.combine.temperature=2"])  # one owner is fine
    load_config(KAGGLE, ["student.distill.temperature=2"])
    # no KD
    load_config(KAGGLE, ["teachers.combine.temperature=2", "student.distill.temperature=2", "student.distill.alpha=0"])


def test_student_copy_beyond_tolerance_is_not_used(monkeypatch, tmp_path, caplog):
    """verify_export at submission start, per device: a drifted copy is logged with its numbers and dropped."""
    import arena_kd.llm.export as export_mod
    from arena_kd.submission.student_infer import load_student

    (tmp_path / "reference_logits.parquet").write_bytes(b"")

    class M:
        def eval(self):
            return self

    def fake_load(export_dir, *, quantization, dtype, device):
        return M(), "tok", {"render": {"max_length": 64}}

    def fake_verify(export_dir, *, quantization, dtype, model, device=None):
        bad = device_of[id(model)] == "cuda:1"
        return {"rows": 16, "nonfinite_rows": 2 if bad else 0, "max_abs_prob_diff": 0.31 if bad else 0.01,
                "mean_abs_prob_diff": 0.1, "quantization": quantization, "dtype": "fp16", "tolerance": 0.16,
                "ok": not bad}

    device_of = {}

    def load_and_tag(export_dir, *, quantization, dtype, device):
        m, t, s = fake_load(export_dir, quantization=quantization, dtype=dtype, device=device)
        device_of[id(m)] = device
        return m, t, s

    monkeypatch.setattr(export_mod, "load_export", load_and_tag)
    monkeypatch.setattr(export_mod, "verify_export", fake_verify)
    with caplog.at_level(logging.INFO, logger="arena_kd.submission"):
        backend = load_student(tmp_path, quantization="8bit", dtype="fp16", devices=["cuda:0", "cuda:1"])
    assert [r.device for r in backend.replicas] == ["cuda:0"] and backend.checks["cuda:1"]["ok"] is False
    assert "0.3100" in caplog.text and "2/16 rows non-finite" in caplog.text and "not used" in caplog.text
    with pytest.raises(RuntimeError, match="not verified as the trained model: 8bit/fp16: max"):
        load_student(tmp_path, quantization="8bit", dtype="fp16", devices=["cuda:1"])


@pytest.mark.slow
def test_small_rehearsal_end_to_end(tmp_path):
    """`make rehearsal` with smaller sizes: stages, `arena-kd package` as the Kaggle input (read-only), the notebook's
    own cell offline, valid submission."""
    from arena_kd.kaggle_package import Names, check_upload
    from arena_kd.rehearsal import main

    work = tmp_path / "work"
    sets = [f"workdir={work}", "data.max_rows=48", "render.max_length=64", "student.reference_rows=8",
            "student.train.epochs=1", "student.train.max_length=64", "teachers.models.0.train.max_length=64",
            "teachers.models.1.train.max_length=64", "stacking.num_boost_round=30", "stacking.early_stopping_rounds=5",
            "stacking.min_data_in_leaf=5"]
    rc = main(["--out", str(tmp_path / "out"), "--test-rows", "24", *[x for s in sets for x in ("--set", s)]])
    report = json.loads((tmp_path / "out" / "rehearsal.json").read_text())
    assert rc == 0, report
    assert report["notebook_rc"] == 0 and report["submission"] == {"rows": 24, "valid": True}
    # the 8-bit student scored every row
    assert report["rows_per_path"].get("stacker+tta", 0) == 24, report["rows_per_path"]
    soup = report["soup"]
    assert soup["folds"] == 2 and soup["rows"] == 8 and {"exact", "average", "single_fold"} <= set(soup)
    verify = report["export_verify"]
    assert set(verify) == {"none", "8bit", "4bit"} and verify["none"]["ok"] and verify["8bit"]["ok"]
    assert verify["8bit"]["dtype"] == "fp16"
    merge = report["export_vs_final_adapter"]  # the merge + fp16 cast alone: far below the tolerances
    assert set(merge) == {"none/fp16", "8bit/fp16", "4bit/fp16"} and merge["none/fp16"]["max_abs_prob_diff"] < 0.02
    kaggle = tmp_path / "out" / "kaggle"
    upload, inp = kaggle / "upload", kaggle / "input"
    # the Kaggle input is `arena-kd package`'s output itself, every metadata rule holds, the notebook's cell ran
    assert report["metadata_problems"] == [] and check_upload(upload, Names("rehearsal")) == []
    assert json.loads((upload / "package.json").read_text())["commands"] == report["kaggle_commands"]
    assert report["notebook"] == str(upload / "arena-kd-submission" / "arena-kd-submission.ipynb")
    assert {p.name for p in inp.iterdir()} == {"arena-kd-code", "arena-kd-artifacts", "arena-kd-wheels",
                                               "lmsys-chatbot-arena"}
    for slug in ("arena-kd-code", "arena-kd-artifacts", "arena-kd-wheels"):
        assert (inp / slug).resolve() == (upload / slug).resolve()
    assert stat.S_IMODE((upload / "arena-kd-artifacts").stat().st_mode) & 0o222 == 0 and report["input_unchanged"]
    assert list((inp / "arena-kd-wheels").glob("arena_kd-*.whl"))
    assert (inp / "lmsys-chatbot-arena" / "train.csv").is_file()
    cfg = yaml.safe_load((inp / "arena-kd-artifacts" / "config.yaml").read_text())
    assert cfg["submission"]["quantization"] == "8bit" and cfg["student"]["final"] == "fold_soup"
    sub = (kaggle / "working" / "submission.csv").read_text().splitlines()
    assert sub[0] == "id,winner_model_a,winner_model_b,winner_tie" and len(sub) == 25
    run = json.loads((kaggle / "working" / "submission.run.json").read_text())
    assert run["student_error"] is None
    assert np.isfinite([verify[q]["max_abs_prob_diff"] for q in verify]).all()


def test_drift_counts_non_finite_rows_and_tolerances_by_precision():
    from arena_kd.llm.export import SOUP_TOLERANCE, TOLERANCE, TOLERANCE_FP32, prob_drift, tolerance

    want = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    got = np.log(want)
    got[1] = [np.inf, np.nan, 0.0]  # an fp16 overflow
    got[2] = [0.1, 0.0, 0.0]
    d = prob_drift(got, want)
    assert d["rows"] == 3 and d["nonfinite_rows"] == 1
    p2 = np.exp([0.1, 0.0, 0.0]) / np.exp([0.1, 0.0, 0.0]).sum()
    assert d["max_abs_prob_diff"] == pytest.approx(np.abs(p2 - 1 / 3).max(), abs=1e-9)
    assert tolerance("none", "fp32", False) == TOLERANCE_FP32 and tolerance("8bit", "fp16", False) == TOLERANCE["8bit"]
    assert tolerance("4bit", "fp16", True) == pytest.approx(TOLERANCE["4bit"] + SOUP_TOLERANCE)
    assert TOLERANCE_FP32 < TOLERANCE["none"] < TOLERANCE["8bit"] < TOLERANCE["4bit"]


def test_dtype_auto_never_picks_emulated_bf16(monkeypatch):
    import torch

    from arena_kd.llm.export import _resolve_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))  # T4: bf16 only emulated
    assert _resolve_dtype("auto", "cuda:0") == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))  # A100
    assert _resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert _resolve_dtype("auto", "cpu") == torch.float32


def test_cpu_optimizer_rule(capsys):
    from arena_kd.llm.train import cpu_optimizer

    assert cpu_optimizer("paged_adamw_8bit") == "adamw_torch" and "needs CUDA" in capsys.readouterr().out
    assert cpu_optimizer("adamw_torch") == "adamw_torch" and capsys.readouterr().out == ""
