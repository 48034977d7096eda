"""submission/plan.py + specs.py: the architecture table, memory, the cost model and `arena-kd plan`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from arena_kd.config import load_config
from arena_kd.errors import UserError
from submission.plan import Lengths, build_plan, estimate_inference, load_calibration, resolve_arch, run_plan, weight_gib
from submission.specs import ARCHS, HARDWARE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("key", sorted(ARCHS))
def test_arch_table_matches_published_parameter_counts(key):
    """Layers/hidden/heads/KV heads/head_dim/intermediate/vocab must add up to the published parameter count."""
    arch = ARCHS[key]
    assert arch.computed_params() == pytest.approx(arch.params, rel=0.01)


def test_weights_in_t4_memory():
    t4 = HARDWARE["t4x2"].usable_gib
    assert weight_gib(ARCHS["gemma2-9b"], "8bit") < t4 < weight_gib(ARCHS["gemma2-9b"], "fp16")
    assert weight_gib(ARCHS["gemma2-9b"], "4bit") < weight_gib(ARCHS["gemma2-9b"], "8bit")
    assert weight_gib(ARCHS["gemma2-27b"], "4bit") > t4  # why the 27B could not run on one T4


def _reference(passes=2, length=1000, rows=25_000, quantization="8bit", hw="t4x2"):
    lengths = Lengths(np.full(rows, length), rows, "fixed")
    return estimate_inference("submission", "gemma2-9b", ARCHS["gemma2-9b"], hw, quantization=quantization, dtype="fp16",
                              lengths=lengths, max_length=2000, passes=passes, tokens_per_batch=8192, max_batch_size=16,
                              calib={})


def test_reference_submission_estimate_within_reported_range():
    """Gemma2-9B, 8-bit, 25k rows x ~1000 tokens, A/B TTA, 2x T4.

    Range 3.5-6 h: the 1st-place team's reported ~4-5 h for a 9B student with TTA on Kaggle's 2x T4 (as quoted
    in the work order; we could not verify the exact lengths they ran), widened for that uncertainty. The T4
    efficiency constant is an assumption (submission/specs.py) consistent with that one public figure, so this
    guards the model's arithmetic (FLOPs per token, TTA doubling, the two GPUs, the units), not its calibration.
    """
    est = _reference()
    assert est.placement == "data-parallel x2"
    assert 3.5 * 3600 <= est.seconds <= 6.0 * 3600
    assert est.mem_gib < HARDWARE["t4x2"].usable_gib


def test_cost_model_scales_as_expected():
    tta, single = _reference(passes=2), _reference(passes=1)
    assert tta.seconds == pytest.approx(2 * single.seconds)
    short = _reference(length=500)
    assert short.seconds < 0.5 * tta.seconds  # half the tokens, and less attention
    assert _reference(hw="h100").seconds < tta.seconds / 2
    fp16 = _reference(quantization="none")
    assert fp16.placement.startswith("split")  # 18 GB of fp16 weights: no copy per T4


def test_calibration_file_overrides_assumed_efficiency(tmp_path):
    arch = ARCHS["gemma2-9b"]
    per_token = 2 * arch.block_params() + 4 * arch.layers * arch.heads * arch.head_dim * 1024
    target = 0.2  # 20 % of the T4's 65 TFLOPS
    rec = {"gpu": "Tesla T4", "model": "gemma2-9b", "precision": "8bit", "mode": "inference",
           "max_length": 1024, "tokens_per_s": target * 65e12 / per_token}
    path = tmp_path / "gpu_results.json"
    path.write_text(json.dumps({"results": [rec, {"gpu": "Unknown GPU", "model": "x", "precision": "8bit", "tokens_per_s": 1}]}))
    calib = load_calibration(path)
    assert calib == {("t4x2", "8bit", "inference"): pytest.approx(target)}
    lengths = Lengths(np.full(100, 1000), 100, "fixed")
    kw = dict(quantization="8bit", dtype="fp16", lengths=lengths, max_length=2000, passes=1, tokens_per_batch=8192, max_batch_size=16)
    slow = estimate_inference("s", "g", arch, "t4x2", calib=calib, **kw)
    assumed = estimate_inference("s", "g", arch, "t4x2", calib={}, **kw)
    assert slow.seconds == pytest.approx(assumed.seconds * HARDWARE["t4x2"].efficiency["8bit"] / target)
    assert "calibrated" in slow.notes[0]


def test_resolve_arch_from_table_and_random_init():
    cfg = load_config(ROOT / "configs/kaggle-gemma2.yaml")
    assert resolve_arch(cfg.student.model)[:2] == ("gemma2-9b", ARCHS["gemma2-9b"])
    assert resolve_arch(cfg.teachers.models[1].model)[1] is ARCHS["llama3-70b"]
    smoke = load_config(ROOT / "configs/smoke.yaml")
    name, arch, src = resolve_arch(smoke.student.model)
    assert arch.hidden == 32 and arch.layers == 2 and "random_init" in src


def test_plan_kaggle_config_prints_table_and_verdict(capsys):
    cfg = load_config(ROOT / "configs/kaggle-gemma2.yaml",
                      [f"data.train={ROOT / 'data/sample/train.csv'}", "submission.expected_test_rows=25000"])
    res = run_plan(cfg, test=str(ROOT / "data/sample/test.csv"), hardware="t4x2")
    out = capsys.readouterr().out
    stages = [e.stage for e in res.estimates]
    assert any(s.startswith("teacher gemma2-27b: train") for s in stages)
    assert any(s.startswith("teacher llama3-70b: OOF") for s in stages)
    assert "student: train (5 folds)" in stages and stages[-1] == "submission (student)"
    assert res.estimates[-1].rows == 25_000
    assert "characters / 4" in res.token_source  # no Gemma tokenizer on this machine
    assert "Kaggle submission on 2x T4" in out and ("FITS" in out)
    assert res.fits_kaggle is True and res.suggestions == []


def test_plan_suggests_changes_when_over_the_limit(capsys):
    cfg = load_config(ROOT / "configs/kaggle-gemma2.yaml",
                      [f"data.train={ROOT / 'data/sample/train.csv'}", "submission.expected_test_rows=250000"])
    res = run_plan(cfg, test=str(ROOT / "data/sample/test.csv"))
    assert res.fits_kaggle is False
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "drop TTA" in out
    assert any("drop TTA and max length" in s for s in res.suggestions)


def test_plan_uses_a_local_tokenizer_when_available(tmp_path):
    """The smoke config's student tokenizer is trained at run time; a saved export tokenizer is picked up."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"]))
    export = tmp_path / "work" / "student" / "export"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(export)
    import pandas as pd

    for name in ("train", "test"):  # 40 rows each: tokenising is the slow part
        pd.read_csv(ROOT / f"data/sample/{name}.csv").head(40).to_csv(tmp_path / f"{name}.csv", index=False)
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"workdir={tmp_path / 'work'}", f"data.train={tmp_path / 'train.csv'}",
                                                    f"data.test={tmp_path / 'test.csv'}"])
    res = build_plan(cfg, hardware="a100", calibration={})
    assert res.token_source.startswith("student tokenizer")
    assert res.estimates[-1].tokens > 0 and res.estimates[-1].placement == "one GPU"


def test_plan_refuses_unknown_hardware():
    cfg = load_config(ROOT / "configs/smoke.yaml")
    with pytest.raises(UserError, match="--hardware: 'v100'"):
        build_plan(cfg, test=str(ROOT / "data/sample/test.csv"), hardware="v100")
