"""arena_kd.llm.loading: BPE tokenizer cache, dtype/attention refusals, softcapping switch, head init, LoRA wiring,
info."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arena_kd.common.errors import UserError
from arena_kd.llm.devices import resolve_dtype
from arena_kd.llm.loading import load_classifier
from arena_kd.llm.tokenizer import ensure_pad_token, load_tokenizer
from arena_kd.llm.train import frame_texts


def test_bpe_tokenizer_is_deterministic_cached_and_llama_like(tiny_llama_cfg, tiny_pairs, tmp_path):
    cfg = tiny_llama_cfg.model_copy(update={"tokenizer": "bpe:300"})
    texts = frame_texts(tiny_pairs)
    t1 = load_tokenizer(cfg, tmp_path / "a", texts)
    t2 = load_tokenizer(cfg, tmp_path / "b", texts)
    assert t1.get_vocab() == t2.get_vocab() and len(t1) == 300
    cached = list((tmp_path / "a" / "tokenizers").glob("bpe-300-*/tokenizer.json"))
    assert len(cached) == 1
    ids = t1("good answer")["input_ids"]
    assert ids[0] == t1.bos_token_id and t1.pad_token_id is not None and t1.padding_side == "right"
    reused = load_tokenizer(cfg, tmp_path / "a")  # inference: no texts, the cached one is found
    assert reused.get_vocab() == t1.get_vocab()
    other = load_tokenizer(cfg, tmp_path / "a", texts[:10])
    assert len(list((tmp_path / "a" / "tokenizers").glob("bpe-300-*"))) == 2 and other.get_vocab() != t1.get_vocab()
    with pytest.raises(UserError, match="no trained BPE"):
        load_tokenizer(cfg, tmp_path / "empty")
    with pytest.raises(UserError, match="bpe:<vocab size>"):
        load_tokenizer(cfg.model_copy(update={"tokenizer": "bpe:lots"}), tmp_path / "a", texts)


def test_pad_token_is_set_when_missing(tiny_bpe_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bpe_tokenizer)
    tok.pad_token = None
    assert tok.pad_token_id is None
    ensure_pad_token(tok)
    assert tok.pad_token == "<unk>"


def test_gemma2_refuses_sdpa_and_cpu_refuses_flash(tiny_gemma2_cfg, tmp_path):
    with pytest.raises(UserError, match="gemma2 needs eager"):
        load_classifier(tiny_gemma2_cfg.model_copy(update={"attn_implementation": "sdpa"}), training=False,
                        workdir=tmp_path)
    with pytest.raises(UserError, match="does not change this"):
        load_classifier(tiny_gemma2_cfg.model_copy(update={"attn_implementation": "sdpa", "disable_softcapping": True}),
                        training=False, workdir=tmp_path)
    with pytest.raises(UserError, match="flash_attention_2 needs a CUDA GPU"):
        load_classifier(tiny_gemma2_cfg.model_copy(update={"attn_implementation": "flash_attention_2"}), training=False,
                        workdir=tmp_path)


def test_dtype_rules(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, training=True) == torch.float32
    assert resolve_dtype("bf16", cpu, training=True) == torch.bfloat16  # asked for explicitly
    assert resolve_dtype("fp16", cpu, training=False) == torch.float16
    with pytest.raises(UserError, match="fp16 training needs a GPU"):
        resolve_dtype("fp16", cpu, training=True)
    # a T4-like GPU: no bf16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))  # emulated bf16 does not count
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    assert resolve_dtype("auto", gpu, training=True) == torch.float16
    with pytest.raises(UserError, match="Tesla T4.*no bf16"):
        resolve_dtype("bf16", gpu, training=True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    assert resolve_dtype("auto", gpu, training=True) == torch.bfloat16


def test_gemma2_info_softcapping_and_eager(tiny_gemma2_cfg, tmp_path):
    model, tok, info = load_classifier(tiny_gemma2_cfg, training=False, workdir=tmp_path)
    assert info["attn_implementation"] == "eager" and info["attn_logit_softcapping"] == 50.0
    assert info["padding_side"] == "right" and info["pad_token_id"] == tok.pad_token_id == model.config.pad_token_id
    off, _, info_off = load_classifier(tiny_gemma2_cfg.model_copy(update={"disable_softcapping": True}), training=False,
                                       workdir=tmp_path)
    assert info_off["disable_softcapping"] is True and info_off["attn_logit_softcapping"] is None
    assert off.config.attn_logit_softcapping is None and info_off["attn_logit_softcapping_original"] == 50.0
    with pytest.raises(UserError, match="no attention softcapping"):
        llama = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                 "num_attention_heads": 2}
        load_classifier(tiny_gemma2_cfg.model_copy(update={"disable_softcapping": True, "random_init": llama}),
                        training=False, workdir=tmp_path)


def test_training_load_reinits_head_and_trains_only_lora_and_head(tiny_llama_cfg, tmp_path):
    cfg = tiny_llama_cfg.model_copy(update={"head_init_std": 0.5})
    model, _, info = load_classifier(cfg, training=True, workdir=tmp_path, seed=1)
    head = model.base_model.model.score.modules_to_save["default"].weight
    assert 0.3 < float(head.detach().std()) < 0.7
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "score" in n for n in names)
    assert any("mlp.down_proj.lora_A" in n for n in names) and any("self_attn.q_proj.lora_B" in n for n in names)
    assert info["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < info["trainable_fraction"] < 1
    # same seed, same fresh head
    again, _, _ = load_classifier(cfg, training=True, workdir=tmp_path, seed=1)
    assert torch.equal(again.base_model.model.score.modules_to_save["default"].weight, head)


def test_full_finetune_without_lora_trains_everything(tiny_llama_cfg, tmp_path):
    cfg = tiny_llama_cfg.model_copy(update={"lora": tiny_llama_cfg.lora.model_copy(update={"enabled": False})})
    model, _, info = load_classifier(cfg, training=True, workdir=tmp_path)
    assert info["lora"] is None and info["trainable_fraction"] == 1.0
    assert not hasattr(model, "peft_config")


def test_bf16_on_cpu_when_asked(tiny_llama_cfg, tiny_pairs, tmp_path):
    from arena_kd.llm.predict import predict_logits

    model, tok, info = load_classifier(tiny_llama_cfg.model_copy(update={"dtype": "bf16"}), training=False,
                                       workdir=tmp_path)
    assert info["dtype"] == "bf16" and next(model.parameters()).dtype == torch.bfloat16
    out = predict_logits(model, tok, tiny_pairs.head(3), max_length=96, progress=False)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_unknown_backbone_is_a_user_error(tiny_llama_cfg, tmp_path):
    with pytest.raises(UserError, match="cannot load"):
        load_classifier(tiny_llama_cfg.model_copy(update={"backbone": str(tmp_path / "nope")}), training=False,
                        workdir=tmp_path)
    with pytest.raises(UserError, match="model_type"):
        load_classifier(tiny_llama_cfg.model_copy(update={"random_init": {"hidden_size": 8}}), training=False,
                        workdir=tmp_path)
