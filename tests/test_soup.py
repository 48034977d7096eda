"""Fold soup: one initialisation for every fold, the exact soup = the mean of the fold deltas, merging a 4-bit
student."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from arena_kd.common.config_model import RenderConfig, TrainConfig
from arena_kd.common.errors import UserError
from arena_kd.llm.loading import load_classifier
from arena_kd.llm.lora import average_adapters, concat_adapters, merge_and_unload, soup_adapters
from arena_kd.llm.train import train_classifier
from arena_kd.student.merge import merged_student, weight_delta


class InitialWeights(TrainerCallback):
    """Captures LoRA A and the score head at the start of training (before any optimizer step)."""

    def __init__(self):
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n or "score" in n}


def _train(cfg, df, out, wd, *, seed, init_seed, steps=3, callbacks=None):
    tc = TrainConfig(max_steps=steps, batch_size=4, grad_accum=1, learning_rate=2e-2, warmup_ratio=0.0,
                     swap_augmentation="none")
    return train_classifier(cfg, tc, RenderConfig(max_length=96), df, None, out, seed=seed, init_seed=init_seed,
                            workdir=wd, progress=False, callbacks=callbacks)


@pytest.fixture(scope="module")
def folds(tiny_gemma2_cfg, tmp_path_factory, tiny_pairs_rows):
    """Two fold adapters (different rows and seeds, one init seed), with their initial weights."""
    from arena_kd.data.schema import make_frame

    wd = tmp_path_factory.mktemp("soup")
    df = make_frame(tiny_pairs_rows)
    cbs = [InitialWeights(), InitialWeights()]
    a = _train(tiny_gemma2_cfg, df.head(12), wd / "fold0", wd, seed=42, init_seed=42, callbacks=[cbs[0]])
    b = _train(tiny_gemma2_cfg, df.iloc[12:24], wd / "fold1", wd, seed=43, init_seed=42, callbacks=[cbs[1]])
    return tiny_gemma2_cfg, wd, df, a, b, cbs


def test_fold_adapters_share_their_initial_lora_a_and_head(folds, tmp_path):
    cfg, wd, df, a, b, cbs = folds
    w0, w1 = cbs[0].weights, cbs[1].weights
    assert any("lora_A" in n for n in w0) and any("score" in n for n in w0)
    for n in w0:
        torch.testing.assert_close(w0[n], w1[n], rtol=0, atol=0)
    # the init seed is recorded with the adapter (the fold's own seed still drives the data order)
    assert json.loads((a.adapter_dir / "llm_info.json").read_text())["init_seed"] == 42
    # and a different init seed does draw a different A (the check above can fail)
    other = InitialWeights()
    _train(cfg, df.head(12), tmp_path / "other", wd, seed=42, init_seed=7, steps=1, callbacks=[other])
    assert any(not torch.equal(other.weights[n], w0[n]) for n in w0 if "lora_A" in n)


def _delta(cfg, wd, adapter):
    base, _, _ = load_classifier(cfg, training=False, workdir=wd)
    merged = merge_and_unload(load_classifier(cfg, training=False, workdir=wd, adapter=adapter)[0])
    return weight_delta(merged, base)


def test_exact_soup_merged_delta_is_the_mean_of_the_fold_deltas(folds, tmp_path):
    cfg, wd, df, a, b, _ = folds
    da, db = _delta(cfg, wd, a.adapter_dir), _delta(cfg, wd, b.adapter_dir)
    exact = concat_adapters([a.adapter_dir, b.adapter_dir], tmp_path / "exact")
    de = _delta(cfg, wd, exact)
    assert set(de) == set(da) | set(db) and any("score" in n for n in de) and any("q_proj" in n for n in de)
    worst = max(float((de[n] - (da.get(n, 0) + db.get(n, 0)) / 2).abs().max()) for n in de)
    assert worst < 1e-5
    soup_cfg = json.loads((exact / "adapter_config.json").read_text())
    src_cfg = json.loads((a.adapter_dir / "adapter_config.json").read_text())
    assert soup_cfg["r"] == 2 * src_cfg["r"]
    assert soup_cfg["lora_alpha"] / soup_cfg["r"] == src_cfg["lora_alpha"] / src_cfg["r"]
    assert json.loads((exact / "soup.json").read_text())["mode"] == "exact"
    # the element-wise average is not the mean of the deltas (cross terms (B1-B2)(A1-A2)/4 remain)
    dv = _delta(cfg, wd, average_adapters([a.adapter_dir, b.adapter_dir], tmp_path / "avg"))
    assert max(float((dv[n] - (da.get(n, 0) + db.get(n, 0)) / 2).abs().max())
               for n in dv if "lora" not in n and "score" not in n) > 1e-5


def test_soup_modes_and_refusals(folds, tmp_path):
    _, _, _, a, b, _ = folds
    assert soup_adapters([a.adapter_dir, b.adapter_dir], tmp_path / "x", "exact").is_dir()
    with pytest.raises(UserError, match="unknown mode"):
        soup_adapters([a.adapter_dir], tmp_path / "y", "median")
    dora = tmp_path / "dora"
    dora.mkdir()
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        (dora / f).write_bytes((a.adapter_dir / f).read_bytes())
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(UserError, match="DoRA"):
        concat_adapters([dora, dora], tmp_path / "z")


def test_4bit_student_merges_into_its_dequantised_weights(tiny_gemma2_cfg, tmp_path, tiny_pairs_rows):
    """A QLoRA student merged into the dequantised NF4 base is the trained model (fp32 compute: ~1e-6);
    merged into the original weights instead it carries the NF4 rounding error."""
    from arena_kd.data.schema import make_frame
    from arena_kd.llm.export import reference_logits

    cfg = tiny_gemma2_cfg.model_copy(update={"quantization": "4bit", "dtype": "fp32"})
    df = make_frame(tiny_pairs_rows)
    trained = _train(cfg, df.head(12), tmp_path / "q", tmp_path, seed=0, init_seed=0)
    ids = [list(range(1, 30)), list(range(5, 60, 2))]
    trained.model.eval()
    want = reference_logits(trained.model, ids)
    merged, _, info = merged_student(cfg, trained.adapter_dir, tmp_path)
    assert not any("lora_" in n for n, _ in merged.named_parameters()) and merged.dtype == torch.float32
    got = reference_logits(merged, ids)
    assert np.abs(got - want).max() < 1e-4
    naive, _, _ = load_classifier(cfg.model_copy(update={"quantization": "none"}), training=False, workdir=tmp_path,
                                  adapter=trained.adapter_dir)
    naive_err = np.abs(reference_logits(merge_and_unload(naive), ids) - want).max()
    assert naive_err > 10 * np.abs(got - want).max()
