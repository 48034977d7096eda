"""model.device_map: auto on a CUDA machine (one GPU is enough): the layers really split between the GPU and the CPU
under a max_memory cap, predict like the unsplit model, and the Trainer trains the split model in one process.

GPU only (run by benchmarks/gpu_check.sh through `pytest -m gpu`); the CPU suite covers the refusal under a
multi-process launch and the placement arguments (tests/test_distributed_rules.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arena_kd.common.config_model import ModelConfig, RenderConfig, TrainConfig
from arena_kd.llm.loading import load_classifier
from arena_kd.llm.predict import predict_logits
from arena_kd.llm.train import train_classifier

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

WIDE = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2}  # ~4 M block params = ~17 MB in fp32


def _cfg(tokenizer: str, **kw) -> ModelConfig:
    return ModelConfig(backbone="random", tokenizer=tokenizer, random_init=WIDE, dtype="fp32",
                       gradient_checkpointing=False, lora={"r": 4, "alpha": 8, "dropout": 0.0}, **kw)


def test_device_map_auto_splits_over_gpu_and_cpu_and_predicts_like_one_device(tiny_bpe_tokenizer, tiny_pairs, tmp_path):
    one, tok, _ = load_classifier(_cfg(tiny_bpe_tokenizer), training=False, workdir=tmp_path, device="cuda")
    split_cfg = _cfg(tiny_bpe_tokenizer, device_map="auto", max_memory={"0": "8MiB", "cpu": "4GiB"})
    split, tok2, info = load_classifier(split_cfg, training=False, workdir=tmp_path)
    devices = {str(d) for d in split.hf_device_map.values()}
    assert "cpu" in devices and devices - {"cpu"}, split.hf_device_map
    assert info["placement"].startswith("auto: ")
    kw = dict(max_length=96, progress=False)
    np.testing.assert_allclose(predict_logits(split, tok2, tiny_pairs, **kw),
                               predict_logits(one, tok, tiny_pairs, **kw), atol=1e-4)


def test_device_map_auto_trains_in_one_process(tiny_bpe_tokenizer, tiny_pairs, tmp_path):
    split_cfg = _cfg(tiny_bpe_tokenizer, device_map="auto", max_memory={"0": "8MiB", "cpu": "4GiB"})
    tc = TrainConfig(max_steps=2, batch_size=4, grad_accum=1, learning_rate=1e-3, warmup_ratio=0.0)
    res = train_classifier(split_cfg, tc, RenderConfig(max_length=96), tiny_pairs, None, tmp_path / "run", seed=0,
                           workdir=tmp_path, progress=False)
    assert res.metrics["global_step"] == 2 and np.isfinite(res.metrics["train_loss"])
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
