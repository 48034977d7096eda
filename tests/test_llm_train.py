"""arena_kd.llm.train: overfitting, pluggable loss + teacher logits, swap augmentation, grad-accum equivalence,
resume, quantized bases."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import TrainerCallback

from arena_kd.common.config_model import RenderConfig, TrainConfig
from arena_kd.common.errors import UserError
from arena_kd.llm.pair_data import PairCollator
from arena_kd.llm.predict import predict_logits
from arena_kd.llm.train import train_classifier

RENDER = RenderConfig(max_length=96)


def _tc(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=4, grad_accum=1, learning_rate=5e-3, warmup_ratio=0.0, logging_steps=1,
                swap_augmentation="none", group_by_length=True)
    base.update(kw)
    return TrainConfig(**base)


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_overfits_a_small_batch(tiny_llama_cfg, tiny_pairs, tmp_path):
    df = tiny_pairs.head(8)
    res = train_classifier(tiny_llama_cfg, _tc(epochs=12, batch_size=8, learning_rate=2e-2, swap_augmentation="both"),
                           RENDER, df, df, tmp_path / "run", seed=0, workdir=tmp_path, progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[0] > 0.9  # ~ln 3 at the start (fresh head)
    assert min(losses[-3:]) < 0.35 * losses[0], losses
    assert res.metrics["eval_log_loss"] < 0.4
    assert any("loss_ce" in r for r in log) and any("eval_log_loss" in r for r in log)
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((res.adapter_dir / "llm_info.json").read_text())["padding_side"] == "right"


def test_loss_fn_sees_teacher_logits_and_both_orientations(tiny_gemma2_cfg, tiny_pairs, tmp_path):
    df = tiny_pairs.head(4).copy()
    teach = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    df["teacher_logits"] = list(teach)
    seen = []

    def loss_fn(logits, batch):
        seen.append({k: v.detach().clone() for k, v in batch.items()})
        ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
        kl = (logits.log_softmax(-1) - batch["teacher_logits"].mean(1).log_softmax(-1)).pow(2).mean()
        return ce + 0.1 * kl, {"ce": float(ce.detach()), "kl": float(kl.detach())}

    train_classifier(tiny_gemma2_cfg, _tc(batch_size=4, swap_augmentation="both", group_by_length=False), RENDER, df,
                     None, tmp_path / "run", seed=0, workdir=tmp_path, loss_fn=loss_fn, progress=False)
    b = seen[0]
    assert b["labels"].shape == (8,) and b["teacher_logits"].shape == (8, 2, 3)
    lab, t = b["labels"].numpy(), b["teacher_logits"].numpy()
    # rows come as (orig, swapped) pairs: label 0<->1 (tie stays), teacher index 0<->1 on the last axis
    for i in range(0, 8, 2):
        assert lab[i + 1] == {0: 1, 1: 0, 2: 2}[int(lab[i])]
        np.testing.assert_array_equal(t[i + 1], t[i][:, [1, 0, 2]])
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_kl" in r and "loss_ce" in r for r in log)


def test_random_swap_is_seeded_per_row_and_epoch():
    items = [{"row": i, "ids": [1, 2, 3 + i], "ids_swapped": [1, 3 + i, 2], "label": i % 3, "teacher": None}
             for i in range(64)]
    c = PairCollator(pad_token_id=0, padding_side="right", swap="random", seed=7, position_ids=True)
    a = c(items)
    again = PairCollator(pad_token_id=0, padding_side="right", swap="random", seed=7, position_ids=True)(items)
    assert torch.equal(a["input_ids"], again["input_ids"])
    flipped = (a["input_ids"][:, 1] != 2).numpy()
    assert 10 < flipped.sum() < 54  # about half
    lab = a["labels"].numpy()
    for i in range(64):
        want = i % 3 if not flipped[i] or i % 3 == 2 else 1 - i % 3
        assert lab[i] == want
    c.epoch = 1
    assert not torch.equal(c(items)["input_ids"], a["input_ids"])


@pytest.mark.parametrize("rows,small,big", [(4, (2, 2), (4, 1)), (3, (2, 2), (3, 1))])
def test_grad_accumulation_matches_one_big_batch(tiny_llama_cfg, tiny_pairs, tmp_path, rows, small, big):
    """One SGD step: batch 2 x accum 2 == batch 4 x accum 1 (and uneven micro-batches 2+1 == 3), via
    num_items_in_batch."""
    df = tiny_pairs.head(rows)
    states, losses = [], []
    for bs, ga in (small, big):
        out = tmp_path / f"b{bs}a{ga}"
        res = train_classifier(tiny_llama_cfg, _tc(batch_size=bs, grad_accum=ga, optim="sgd", learning_rate=0.5,
                                                   max_grad_norm=1e9, group_by_length=False, max_steps=1),
                               RENDER, df, None, out, seed=0, workdir=tmp_path, progress=False)
        states.append(_lora_state(res.model))
        losses.append([json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][0]["loss"])
    for k in states[0]:
        np.testing.assert_allclose(states[0][k].numpy(), states[1][k].numpy(), atol=2e-6, rtol=1e-5, err_msg=k)
    lora_b = [k for k in states[0] if "lora_B" in k]
    # the step moved the (zero-initialised) B
    assert lora_b and all(float(states[0][k].abs().max()) > 0 for k in lora_b)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_from_checkpoint_reaches_the_same_weights(tiny_gemma2_cfg, tiny_pairs, tmp_path):
    df = tiny_pairs.head(12)
    tc = _tc(epochs=2, batch_size=4, swap_augmentation="random", save_steps=2, group_by_length=True)
    full = train_classifier(tiny_gemma2_cfg, tc, RENDER, df, None, tmp_path / "full", seed=3, workdir=tmp_path,
                            progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(tiny_gemma2_cfg, tc, RENDER, df, None, tmp_path / "cut", seed=3, workdir=tmp_path,
                         progress=False, callbacks=[_StopAt(5)])
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "cut" / "train_result.json").exists()
    # checkpoints of other settings are never resumed
    import shutil

    shutil.copytree(tmp_path / "cut", tmp_path / "other")
    changed = train_classifier(tiny_gemma2_cfg, tc.model_copy(update={"learning_rate": 1e-3}), RENDER, df, None,
                               tmp_path / "other", seed=3, workdir=tmp_path, progress=False)
    assert changed.metrics["resumed_from"] is None and changed.metrics["global_step"] == 6
    resumed = train_classifier(tiny_gemma2_cfg, tc, RENDER, df, None, tmp_path / "cut", seed=3, workdir=tmp_path,
                               progress=False)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-4")
    a, b = _lora_state(full.model), _lora_state(resumed.model)
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, rtol=1e-5, err_msg=k)
    # a finished run with the same settings is reloaded, not retrained
    again = train_classifier(tiny_gemma2_cfg, tc, RENDER, df, None, tmp_path / "cut", seed=3, workdir=tmp_path,
                             progress=False)
    assert again.metrics["global_step"] == resumed.metrics["global_step"]
    np.testing.assert_allclose(predict_logits(again.model, again.tokenizer, df, max_length=96, progress=False),
                               predict_logits(resumed.model, resumed.tokenizer, df, max_length=96, progress=False),
                               atol=1e-6)


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantized_base_trains_a_step_and_predicts_on_cpu(tiny_llama_cfg, tiny_pairs, tmp_path, quant):
    cfg = tiny_llama_cfg.model_copy(update={"quantization": quant, "gradient_checkpointing": True})
    df = tiny_pairs.head(4)
    res = train_classifier(cfg, _tc(max_steps=2, batch_size=2), RENDER, df, None, tmp_path / "run", seed=0,
                           workdir=tmp_path, progress=False)
    assert res.info["quantization"] == quant
    layer = res.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == ("Linear4bit" if quant == "4bit" else "Linear8bitLt")
    out = predict_logits(res.model, res.tokenizer, df, max_length=96, progress=False)
    assert out.shape == (4, 3) and np.isfinite(out).all()
    assert res.metrics["global_step"] == 2 and np.isfinite(res.metrics["train_loss"])
    b = [v for k, v in res.model.named_parameters() if "lora_B" in k]
    # gradients flowed through the checkpointed k-bit base
    assert b and all(float(v.detach().abs().max()) > 0 for v in b)
    # the saved adapter loads onto a freshly quantized base for inference and gives the same logits
    from arena_kd.llm.loading import load_classifier

    model, tok, info = load_classifier(cfg, training=False, workdir=tmp_path, adapter=res.adapter_dir)
    assert info["quantization"] == quant
    np.testing.assert_allclose(predict_logits(model, tok, df, max_length=96, progress=False), out, atol=1e-5)


def test_missing_label_in_training_rows_is_a_user_error(tiny_llama_cfg, tiny_pairs, tmp_path):
    df = tiny_pairs.head(4).copy()
    df.loc[2, "label"] = None
    with pytest.raises(UserError, match=r"row 2, column 'label'"):
        train_classifier(tiny_llama_cfg, _tc(max_steps=1), RENDER, df, None, tmp_path / "run", seed=0, workdir=tmp_path,
                         progress=False)


def test_rows_without_a_label_train_on_their_soft_terms_when_the_loss_takes_them(tiny_llama_cfg, tiny_pairs,
                                                                                  tmp_path):
    # issue 21: extra pairs have no hard label (-100 in the batch). A micro-batch of such rows alone holds no label
    # at all: HF's count of labels != -100 is 0 there and the rescaled loss NaN; every row counts instead
    from arena_kd.student.losses import DistillationLoss

    df = tiny_pairs.head(4).copy()
    df["label"] = pd.array([pd.NA] * 4, dtype="Int8")
    df["teacher_logits"] = [np.array([3.0, 0.0, 0.0], dtype=np.float32)] * 4
    with pytest.raises(UserError, match="missing label"):  # the default loss refuses them
        train_classifier(tiny_llama_cfg, _tc(), RENDER, df, None, tmp_path / "ce", seed=0, workdir=tmp_path,
                         progress=False)
    res = train_classifier(tiny_llama_cfg, _tc(batch_size=4, max_steps=2), RENDER, df, None,
                           tmp_path / "kd", seed=0, workdir=tmp_path, loss_fn=DistillationLoss(alpha=0.5),
                           progress=False)
    log = [json.loads(x) for x in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in steps), steps
    assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_length_grouped_sampler_is_seeded_per_epoch_and_groups_lengths():
    from arena_kd.llm.trainer import EpochLengthGroupedSampler

    lengths = list(np.random.default_rng(0).integers(5, 500, size=40))
    s = EpochLengthGroupedSampler(8, lengths, seed=1)
    e0 = list(s)
    assert sorted(e0) == list(range(40)) and list(EpochLengthGroupedSampler(8, lengths, seed=1)) == e0
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0
    s.set_epoch(0)
    assert list(s) == e0  # a resumed run replays the epoch's order
    assert lengths[e0[0]] == max(lengths)  # the longest row comes first (an OOM shows up at once)
    for k in range(0, 40, 8):  # each megabatch (batch x accum rows) is sorted by length (HF swaps only the first row)
        mb = [lengths[i] for i in e0[k + 1 : k + 8]]
        assert mb == sorted(mb, reverse=True)


def test_bpe_tokenizer_texts_can_be_shared_across_folds(tiny_llama_cfg, tiny_pairs, tmp_path):
    from arena_kd.llm.train import frame_texts

    cfg = tiny_llama_cfg.model_copy(update={"tokenizer": "bpe:300"})
    texts = frame_texts(tiny_pairs)
    tc = _tc(max_steps=1)
    a = train_classifier(cfg, tc, RENDER, tiny_pairs.head(8), None, tmp_path / "f0", seed=0, workdir=tmp_path,
                         progress=False, tokenizer_texts=texts)
    b = train_classifier(cfg, tc, RENDER, tiny_pairs.iloc[8:16], None, tmp_path / "f1", seed=0, workdir=tmp_path,
                         progress=False, tokenizer_texts=texts)
    c = train_classifier(cfg, tc, RENDER, tiny_pairs.iloc[8:16], None, tmp_path / "f2", seed=0, workdir=tmp_path,
                         progress=False)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert c.tokenizer.get_vocab() != a.tokenizer.get_vocab()  # default: the fold's own texts


class _Snapshot(TrainerCallback):
    """Trainable parameters at the start of training (the fresh head, LoRA A/B or the full body)."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.start = {k: v.detach().float().clone() for k, v in model.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("lora", [True, False])
def test_head_learning_rate_steps_the_head_at_its_own_rate(tiny_llama_cfg, tiny_pairs, tmp_path, lora):
    """train.head_learning_rate: the head's parameters step at their own LR, everything else at learning_rate. With
    the body's LR near zero and a large head LR only the head moves; without head_learning_rate nothing moves."""
    no_lora = tiny_llama_cfg.lora.model_copy(update={"enabled": False})
    cfg = tiny_llama_cfg if lora else tiny_llama_cfg.model_copy(update={"lora": no_lora})
    df = tiny_pairs.head(8)
    moved = {}
    for name, kw in {"head": dict(head_learning_rate=1e-2), "same": {}}.items():
        snap = _Snapshot()
        res = train_classifier(cfg, _tc(epochs=2, learning_rate=1e-9, **kw), RENDER, df, None, tmp_path / name,
                               seed=0, workdir=tmp_path, progress=False, callbacks=[snap])
        end = {k: v.detach().float() for k, v in res.model.named_parameters() if v.requires_grad}
        moved[name] = {k: float((end[k] - snap.start[k]).abs().max()) for k in snap.start}
    is_head = {k: ("score" in k or "classifier" in k) for k in moved["head"]}
    assert any(is_head.values()) and not all(is_head.values())
    head_step = max(v for k, v in moved["head"].items() if is_head[k])
    body_step = max(v for k, v in moved["head"].items() if not is_head[k])
    assert head_step > 1e-3, head_step          # AdamW steps ~lr per step: 1e-2 over 4 steps
    assert body_step < 1e-6, body_step          # the body stayed at 1e-9
    assert max(moved["same"].values()) < 1e-6  # null: the head follows learning_rate (1e-9)


def test_length_grouped_sampler_shuffles_its_steps():
    """HF's order walks every mega-batch from long to short rows (an epoch's steps before its last small mega-batch
    are the shortest: on the sample, HH rows without ties); ours keeps each step length-grouped but shuffles the
    steps (the longest first, a partial step last)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from arena_kd.llm.trainer import EpochLengthGroupedSampler

    lengths = list(np.random.default_rng(0).integers(5, 500, size=403))  # 50 full steps of 8 + a partial one of 3

    def shorter_than_previous(order):  # fraction of consecutive full steps whose mean length goes down
        means = [np.mean([lengths[i] for i in order[k:k + 8]]) for k in range(0, 400, 8)]
        return float(np.mean(np.diff(means) < 0))

    ours, hf = [], []
    for seed in range(20):
        order = list(EpochLengthGroupedSampler(8, lengths, seed=seed))
        assert sorted(order) == list(range(403))
        assert lengths[order[0]] == max(lengths)  # the longest row still comes first
        steps = [order[k:k + 8] for k in range(0, 400, 8)]
        spread = np.mean([np.ptp([lengths[i] for i in s]) for s in steps])
        assert spread < 0.25 * np.ptp(lengths)  # still length-grouped (random steps: ~0.75)
        ours.append(shorter_than_previous(order))
        hf.append(shorter_than_previous(get_length_grouped_indices(lengths, 8, generator=torch.Generator().manual_seed(
            seed))))
    assert np.mean(hf) > 0.85  # HF: long -> short inside every mega-batch
    assert 0.35 < np.mean(ours) < 0.65, ours
