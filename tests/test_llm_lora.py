"""arena_kd.llm.lora: adapter save/load roundtrip, merge_and_unload, fold-soup averaging."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from arena_kd.common.config_model import RenderConfig, TrainConfig
from arena_kd.common.errors import UserError
from arena_kd.llm.loading import load_classifier
from arena_kd.llm.lora import average_adapters, merge_and_unload
from arena_kd.llm.predict import predict_logits
from arena_kd.llm.train import train_classifier

KW = dict(max_length=96, progress=False)


def _train(cfg, df, out, wd, seed=0, steps=3):
    tc = TrainConfig(max_steps=steps, batch_size=4, grad_accum=1, learning_rate=2e-2, warmup_ratio=0.0,
                     swap_augmentation="none")
    return train_classifier(cfg, tc, RenderConfig(max_length=96), df, None, out, seed=seed, workdir=wd, progress=False)


@pytest.fixture(scope="module")
def trained(tiny_gemma2_cfg, tmp_path_factory, tiny_pairs_rows):
    from arena_kd.data.schema import make_frame

    wd = tmp_path_factory.mktemp("lora")
    df = make_frame(tiny_pairs_rows)
    a = _train(tiny_gemma2_cfg, df.head(8), wd / "a", wd, seed=0)
    b = _train(tiny_gemma2_cfg, df.iloc[8:16], wd / "b", wd, seed=1)
    return tiny_gemma2_cfg, wd, df, a, b


def test_save_load_roundtrip_gives_identical_logits(trained):
    cfg, wd, df, a, _ = trained
    before = predict_logits(a.model, a.tokenizer, df, **KW)
    model, tok, info = load_classifier(cfg, training=False, workdir=wd, adapter=a.adapter_dir)
    after = predict_logits(model, tok, df, **KW)
    np.testing.assert_array_equal(after, before)
    assert info["adapter"] == str(a.adapter_dir) and info["attn_implementation"] == "eager"
    # the adapter really changed the model: the bare base predicts differently
    base, btok, _ = load_classifier(cfg, training=False, workdir=wd)
    assert not np.allclose(predict_logits(base, btok, df, **KW), before, atol=1e-3)


def test_merge_and_unload_matches_within_1e5(trained):
    cfg, wd, df, a, _ = trained
    model, tok, _ = load_classifier(cfg, training=False, workdir=wd, adapter=a.adapter_dir)
    ref = predict_logits(model, tok, df, **KW)
    merged = merge_and_unload(model)
    assert not hasattr(merged, "peft_config")
    np.testing.assert_allclose(predict_logits(merged, tok, df, **KW), ref, atol=1e-5, rtol=0)


def test_average_of_identical_adapters_is_that_adapter(trained, tmp_path):
    cfg, wd, df, a, _ = trained
    soup = average_adapters([a.adapter_dir] * 3, tmp_path / "soup")
    model, tok, _ = load_classifier(cfg, training=False, workdir=wd, adapter=soup)
    ref, _tok, _ = load_classifier(cfg, training=False, workdir=wd, adapter=a.adapter_dir)
    np.testing.assert_allclose(predict_logits(model, tok, df, **KW), predict_logits(ref, _tok, df, **KW),
                               atol=1e-6, rtol=0)


def test_average_is_the_elementwise_mean_of_lora_and_head(trained, tmp_path):
    _, _, _, a, b = trained
    soup = average_adapters([a.adapter_dir, b.adapter_dir], tmp_path / "soup")
    wa, wb, ws = (load_file(str(d / "adapter_model.safetensors")) for d in (a.adapter_dir, b.adapter_dir, soup))
    assert ws.keys() == wa.keys()
    assert any("score" in k for k in ws) and any("lora_A" in k for k in ws) and any("lora_B" in k for k in ws)
    for k in ws:
        np.testing.assert_allclose(ws[k].numpy(), (wa[k].numpy() + wb[k].numpy()) / 2, atol=1e-7)
    lora_b = next(k for k in ws if "lora_B" in k)
    assert not np.allclose(wa[lora_b].numpy(), wb[lora_b].numpy())
    assert json.loads((soup / "soup.json").read_text())["folds"] == [str(a.adapter_dir), str(b.adapter_dir)]


def test_average_refuses_adapters_of_different_rank(trained, tmp_path):
    cfg, wd, df, a, _ = trained
    other = _train(cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"r": 2})}), df.head(4), tmp_path / "r2",
                   wd, steps=1)
    with pytest.raises(UserError, match="'r'"):
        average_adapters([a.adapter_dir, other.adapter_dir], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_full_finetune_saves_and_reloads_the_whole_model(tiny_llama_cfg, tiny_pairs, tmp_path):
    cfg = tiny_llama_cfg.model_copy(update={"lora": tiny_llama_cfg.lora.model_copy(update={"enabled": False})})
    res = _train(cfg, tiny_pairs.head(8), tmp_path / "full", tmp_path, steps=2)
    assert (res.adapter_dir / "config.json").is_file() and not (res.adapter_dir / "adapter_config.json").exists()
    model, tok, info = load_classifier(cfg, training=False, workdir=tmp_path, adapter=res.adapter_dir)
    assert info["source"] == str(res.adapter_dir)
    np.testing.assert_array_equal(predict_logits(model, tok, tiny_pairs, **KW),
                                  predict_logits(res.model, res.tokenizer, tiny_pairs, **KW))
