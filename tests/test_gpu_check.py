"""The GPU results schema end to end: benchmark writer -> file -> planner; gpu_check.sh --dry-run on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arena_kd.common.config import load_config
from arena_kd.common.errors import UserError
from arena_kd.planner.calibration import SCHEMA, load_calibration, read_results, record_efficiency
from arena_kd.planner.plan import build_plan
from arena_kd.planner.specs import HARDWARE

ROOT = Path(__file__).resolve().parents[1]
TEST = str(ROOT / "data/sample/test.csv")


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks/gpu_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _h100_results(bench, tmp_path: Path) -> Path:
    """What gpu_throughput.py writes on an H100, built with its own Record/Results/write_results."""
    recs = [bench.Record("inference", "gemma2-9b", "bf16", 1024, 8, 14, 42, 30_000.0, 10_000.0, 20.0, 40.0),
            bench.Record("inference", "gemma2-9b", "bf16", 2000, 4, 14, 42, 28_000.0, 9_000.0, 22.0, 42.0),
            bench.Record("train_step", "gemma2-9b", "4bit", 1024, 2, 14, 42, 3_000.0, 1_000.0, 15.0, 45.0,
                         gradient_checkpointing=True, lora_r=64)]
    res = bench.Results(card="NVIDIA H100 80GB HBM3", date="2026-11-27T12:00:00Z", records=recs, card_memory_gib=79.1,
                        skipped=[{"what": "bnb 8bit inference", "why": "bitsandbytes not importable"}])
    return bench.write_results(tmp_path / "h100.json", res)


def test_round_trip_benchmark_file_planner(tmp_path):
    bench = _bench()
    path = _h100_results(bench, tmp_path)
    assert json.loads(path.read_text())["schema"] == SCHEMA
    res = read_results(path)
    assert res.card == "NVIDIA H100 80GB HBM3" and len(res.records) == 3 and not res.dry_run
    calib, notes = load_calibration([path])
    bf16 = calib[("h100", "bf16", "inference")]
    want = sum(record_efficiency(r, HARDWARE["h100"].peak_tflops_fp16) for r in res.records[:2]) / 2
    assert bf16.efficiency == pytest.approx(want)
    assert bf16.provenance == f"calibrated from {path}, NVIDIA H100 80GB HBM3, 2026-11-27"
    assert ("h100", "4bit", "train") in calib and ("t4x2", "bf16", "inference") not in calib

    cfg = load_config(ROOT / "configs/kaggle-gemma2.yaml", [f"data.train={ROOT / 'data/sample/train.csv'}"])
    plan = build_plan(cfg, test=TEST, hardware="h100", calibration_files=[str(path)])
    teacher_oof = next(e for e in plan.estimates if e.stage == "teacher gemma2-27b: OOF predict")
    student_train = next(e for e in plan.estimates if e.stage.startswith("student: train"))
    assert teacher_oof.precision == "4bit" and not any("calibrated" in s for s in teacher_oof.sources)
    assert f"throughput: calibrated from {path}, NVIDIA H100 80GB HBM3, 2026-11-27" in student_train.sources
    uncalibrated = build_plan(cfg, test=TEST, hardware="h100", calibration={})
    plain = next(e for e in uncalibrated.estimates if e.stage.startswith("student: train"))
    assert student_train.seconds != plain.seconds


def test_old_or_broken_results_files_are_refused_in_one_line(tmp_path):
    old = tmp_path / "gpu_results.json"
    old.write_text(json.dumps({"device": "Tesla T4", "models": {}}))  # the format gpu_throughput.py used to write
    with pytest.raises(UserError, match=f"{old}: schema 'None' is not '{SCHEMA}'"):
        read_results(old)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": SCHEMA, "card": "Tesla T4", "date": "2026-01-01", "records": [{"kind": "x"}]}))
    with pytest.raises(UserError, match="bad.json: bad results record"):
        read_results(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: this would measure for real")
def test_gpu_throughput_without_cuda_measures_nothing(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _bench().main(["--out", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out and not out.exists()


def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The one prepared command, end to end on tiny shapes: every precision, the QLoRA step, the results file."""
    out = tmp_path / "dry.json"
    env = {**os.environ, "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels"), "TMPDIR": str(tmp_path)}
    p = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run", "--out", str(out)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = read_results(out)
    assert res.dry_run and res.card == "cpu (dry run)"
    got = {(r.kind, r.precision, r.seq_len) for r in res.records}
    for prec in ("bf16", "fp16", "8bit", "4bit"):
        assert {("inference", prec, 32), ("inference", prec, 62)} <= got, (prec, got, res.skipped)
    train = [r for r in res.records if r.kind == "train_step"]
    assert train and train[0].gradient_checkpointing and train[0].lora_r == 8
    assert {s["status"] for s in res.steps} == {"skipped"} and all("CUDA" in s["detail"] for s in res.steps)
    assert "already installed" in p.stderr + p.stdout and f"wrote {out}" in p.stdout
    assert f"gpu_check: {out}: cpu (dry run)" in p.stdout  # step 3: the planner read the file back
    calib, notes = load_calibration([out])
    assert calib == {} and any("dry run" in n and "not used" in n for n in notes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_throughput_tiny_on_cuda(tmp_path):
    """The CUDA paths in seconds: 16-bit casts, bnb 8-bit/4-bit swaps, peak memory, the QLoRA step with paged AdamW."""
    out = tmp_path / "tiny.json"
    assert _bench().main(["--tiny", "--out", str(out)]) == 0
    res = read_results(out)
    assert res.dry_run and "(tiny)" in res.card
    assert all(r.peak_gib is not None and r.peak_gib > 0 for r in res.records)
    assert {r.precision for r in res.records if r.kind == "inference"} >= {"fp16", "8bit", "4bit"}, res.skipped
    assert any(r.kind == "train_step" for r in res.records), res.skipped
    assert not any("AdamW" in s["what"] for s in res.skipped), res.skipped
