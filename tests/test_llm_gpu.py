"""llm/ on a CUDA GPU: auto dtype (bf16 or fp16 + grad scaler), 4-bit/8-bit QLoRA step, prediction parity with fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arena_kd.common.config_model import RenderConfig, TrainConfig
from arena_kd.llm.devices import native_bf16
from arena_kd.llm.loading import load_classifier
from arena_kd.llm.predict import predict_logits, predict_tta
from arena_kd.llm.train import train_classifier

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype,quant", [("auto", "none"), ("fp16", "none"), ("auto", "4bit"), ("auto", "8bit")])
def test_gpu_train_step_and_predict(tiny_gemma2_cfg, tiny_pairs, tmp_path, dtype, quant):
    cfg = tiny_gemma2_cfg.model_copy(update={"dtype": dtype, "quantization": quant, "gradient_checkpointing": True})
    tc = TrainConfig(max_steps=2, batch_size=4, grad_accum=2, learning_rate=1e-3, warmup_ratio=0.0,
                     swap_augmentation="both")
    res = train_classifier(cfg, tc, RenderConfig(max_length=96), tiny_pairs, tiny_pairs.head(6), tmp_path / "run",
                           seed=0, workdir=tmp_path, progress=False)
    assert res.info["device"].startswith("cuda")
    want = "fp16" if dtype == "fp16" or not native_bf16() else "bf16"  # auto never picks emulated bf16 (T4)
    assert res.info["dtype"] == want
    assert np.isfinite(res.metrics["train_loss"]) and np.isfinite(res.metrics["eval_log_loss"])
    out = predict_tta(res.model, res.tokenizer, tiny_pairs, max_length=96, progress=False)
    assert np.isfinite(out["avg"]).all()


def test_gpu_bf16_prediction_close_to_cpu_fp32(tiny_llama_cfg, tiny_pairs, tmp_path):
    cpu, tok, _ = load_classifier(tiny_llama_cfg, training=False, workdir=tmp_path, device="cpu")
    gpu, tok2, _ = load_classifier(tiny_llama_cfg.model_copy(update={"dtype": "fp32"}), training=False,
                                   workdir=tmp_path, device="cuda")
    a = predict_logits(cpu, tok, tiny_pairs, max_length=96, progress=False)
    b = predict_logits(gpu, tok2, tiny_pairs, max_length=96, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-3)
