"""Scale-out rules that need no second process: shipped accelerate configs, sharded-QLoRA loading, placements,
refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from arena_kd.common.config_model import ModelConfig
from arena_kd.common.errors import UserError
from arena_kd.llm import placement
from arena_kd.llm.loading import load_classifier
from arena_kd.llm.predict import predict_logits

ACCEL = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1}


def _launch_env(monkeypatch, world: int = 2, fsdp: bool = False) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    if fsdp:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    else:
        monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)


@pytest.mark.parametrize("path", sorted(ACCEL.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_are_valid_for_accelerate(path):
    """accelerate's own loader accepts every file (it refuses unknown keys); the program, not the launch, picks
    precision."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    raw = yaml.safe_load(path.read_text())
    assert raw["mixed_precision"] == "no" and raw["use_cpu"] is False  # use_cpu: true would start one process
    fsdp = raw.get("fsdp_config") or {}
    if fsdp.get("fsdp_cpu_ram_efficient_loading"):
        assert fsdp["fsdp_sync_module_states"] is True  # accelerate refuses the one without the other at launch
    if fsdp.get("fsdp_version") == 1:
        assert fsdp["fsdp_use_orig_params"] is False  # peft FSDP-QLoRA docs
    if path.name.endswith("-cpu.yaml") or path.name == "cpu-2proc.yaml":
        # the multi-process launcher path (not MULTI_CPU, which accelerate 1.15 sends to its single-process launcher)
        assert cfg.num_processes == 2 and str(cfg.distributed_type).split(".")[-1] in ("MULTI_GPU", "FSDP")
        assert fsdp.get("fsdp_version", 2) == 2  # FSDP1 needs an accelerator device


def test_expected_accelerate_configs_are_shipped():
    names = {p.name for p in ACCEL.glob("*.yaml")}
    assert {"multi-gpu.yaml", "multinode.yaml", "fsdp-qlora.yaml", "cpu-2proc.yaml", "fsdp-qlora-cpu.yaml"} <= names


def test_sharding_launch_is_read_from_the_launcher_environment(monkeypatch):
    _launch_env(monkeypatch, world=1, fsdp=True)
    assert placement.sharding_launch() is None  # one process: nothing to shard over
    _launch_env(monkeypatch, world=2, fsdp=True)
    assert placement.sharding_launch() == "fsdp"
    _launch_env(monkeypatch, world=2)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert placement.sharding_launch() == "zero3"
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert placement.sharding_launch() is None  # ZeRO-2 keeps full weights on every rank


def test_sharded_storage_dtype_follows_the_peft_rule():
    assert placement.sharded_storage_dtype(torch.bfloat16) == torch.bfloat16
    assert placement.sharded_storage_dtype(torch.float16) == torch.float32  # fp16 mixed precision: fp32 storage
    assert placement.sharded_storage_dtype(torch.float32) == torch.float32


def _cfg(**kw) -> ModelConfig:
    base = dict(backbone="random", tokenizer="bpe:400", random_init=TINY, gradient_checkpointing=False,
                lora={"r": 4, "alpha": 8, "dropout": 0.0})
    return ModelConfig(**{**base, **kw})


TEXTS = ["the good answer is clear", "a bad answer is wrong", "same same", "question: where is paris?"] * 20


def test_sharded_qlora_keeps_one_dtype_and_skips_kbit_preparation(monkeypatch, tmp_path):
    """Under an FSDP launch every parameter (4-bit storage, norms, embeddings, LoRA, head) is bf16: FSDP can shard
    them together. Without the launch prepare_model_for_kbit_training upcasts to fp32 (mixed dtypes)."""
    cfg = _cfg(dtype="bf16", quantization="4bit")
    _launch_env(monkeypatch, fsdp=True)  # no process group: main-process-first is a no-op here
    model, _, info = load_classifier(cfg, training=True, workdir=tmp_path, train_texts=TEXTS, seed=0)
    assert info["placement"] == "fsdp"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    weight = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert type(weight).__name__ == "Params4bit" and weight.quant_storage == torch.bfloat16
    _launch_env(monkeypatch, world=1)
    model, _, info = load_classifier(cfg, training=True, workdir=tmp_path, train_texts=TEXTS, seed=0)
    assert info["placement"] == "single"
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_refused_under_a_sharded_launch_with_one_line(monkeypatch):
    _launch_env(monkeypatch, fsdp=True)
    for cfg, optim, save_steps, words in [
        (_cfg(quantization="4bit"), "paged_adamw_8bit", 100, ("paged_adamw_8bit", "save_steps=100", "fsdp")),
        (_cfg(quantization="8bit"), "adamw_torch", 0, ("8bit", "fsdp")),
    ]:
        with pytest.raises(UserError) as exc:
            placement.check_sharded_training(cfg, optim, save_steps)
        assert "\n" not in str(exc.value) and all(w in str(exc.value) for w in words)
    placement.check_sharded_training(_cfg(quantization="4bit"), "paged_adamw_8bit", 0)  # no checkpoints: allowed
    placement.check_sharded_training(_cfg(quantization="4bit"), "adamw_torch", 100)
    _launch_env(monkeypatch)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(UserError, match="ZeRO-3 launch: not supported"):
        placement.check_sharded_training(_cfg(quantization="4bit"), "adamw_torch", 0)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    # data parallel: every rank holds the full model, nothing to refuse
    placement.check_sharded_training(_cfg(quantization="8bit"), "paged_adamw_8bit", 100)


def test_device_map_auto_is_refused_under_a_multi_process_launch(monkeypatch, tmp_path):
    _launch_env(monkeypatch, world=2)
    with pytest.raises(UserError) as exc:
        load_classifier(_cfg(device_map="auto"), training=False, workdir=tmp_path, train_texts=TEXTS)
    msg = str(exc.value)
    assert msg.startswith("model.device_map=auto") and "2-process launch" in msg and "\n" not in msg


def test_device_map_auto_config_validation():
    assert _cfg(device_map="auto", max_memory={"0": "20GiB", "1": "20GiB", "cpu": "64GiB"}).max_memory["cpu"] == "64GiB"
    with pytest.raises(ValueError, match="only used with device_map: auto"):
        _cfg(max_memory={"0": "20GiB"})
    with pytest.raises(ValueError, match="GPU index"):
        _cfg(device_map="auto", max_memory={"cuda0": "20GiB"})
    kw = placement.placement_kwargs("auto", {"0": "20GiB", "cpu": "64GiB"}, torch.device("cpu"), quantized=False)
    assert kw == {"device_map": "auto", "max_memory": {0: "20GiB", "cpu": "64GiB"}}  # accelerate wants int GPU keys


def test_device_map_auto_in_one_process_predicts_like_single_placement(monkeypatch, tmp_path, tiny_pairs):
    """On a CPU-only machine auto places everything on the CPU: same logits as the default placement (the GPU split
    itself is tests/test_distributed_gpu.py)."""
    from transformers import AutoModelForSequenceClassification

    _launch_env(monkeypatch, world=1)
    one, tok, _ = load_classifier(_cfg(), training=False, workdir=tmp_path, train_texts=TEXTS)
    seen = []
    real = AutoModelForSequenceClassification.from_pretrained.__func__

    def spy(cls, *a, **kw):
        # copy: HF converts it in place
        seen.append({"device_map": kw.get("device_map"), "max_memory": dict(kw.get("max_memory") or {})})
        return real(cls, *a, **kw)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", classmethod(spy))
    auto, tok2, info = load_classifier(_cfg(device_map="auto", max_memory={"cpu": "8GiB"}), training=False,
                                       workdir=tmp_path, train_texts=TEXTS)
    assert seen == [{"device_map": "auto", "max_memory": {"cpu": "8GiB"}}]
    assert info["placement"] == "single"  # one device (the CPU) holds every module
    kw = dict(max_length=96, progress=False)
    np.testing.assert_allclose(predict_logits(auto, tok2, tiny_pairs, **kw), predict_logits(one, tok, tiny_pairs, **kw),
                               atol=1e-5)


def test_placement_is_left_out_of_every_resume_hash():
    """Moving a run to other hardware (model.device_map / max_memory) keeps finished teacher and student folds."""
    from arena_kd.common.config import load_config
    from arena_kd.student.run import student_config_hash
    from arena_kd.teachers.run import teacher_config_hash

    base = load_config("configs/smoke.yaml")
    moved = load_config("configs/smoke.yaml", overrides=[
        "student.model.device_map=auto", "student.model.max_memory={cpu: 8GiB}",
        "teachers.models.0.model.device_map=auto", "teachers.models.0.model.max_memory={cpu: 8GiB}"])
    assert student_config_hash(moved) == student_config_hash(base)
    assert teacher_config_hash(moved, moved.teachers.models[0]) == teacher_config_hash(base, base.teachers.models[0])
    changed = load_config("configs/smoke.yaml", overrides=["student.model.lora.r=2"])
    assert student_config_hash(changed) != student_config_hash(base)  # what the model computes still counts


def test_a_block_run_alone_predicts_every_row_without_the_group(monkeypatch, tmp_path, tiny_pairs):
    """Rank 0's writers (main_write) run alone: no barrier, no sharded prediction inside (a collective there met an
    unrelated one of the other rank: the `arena-kd all` hang). Here no group exists at all, so a collective would
    block or fail: predicting all rows under WORLD_SIZE=2 shows that nothing waits for a second process."""
    from arena_kd.kfold import dist

    model, tok, _ = load_classifier(_cfg(), training=False, workdir=tmp_path, train_texts=TEXTS)
    kw = dict(max_length=96, progress=False)
    alone = predict_logits(model, tok, tiny_pairs, **kw)
    _launch_env(monkeypatch, world=2)
    monkeypatch.setenv("RANK", "0")
    seen = dist.main_write(lambda: (placement.in_solo(), predict_logits(model, tok, tiny_pairs, **kw)))
    assert seen[0] is True and not placement.in_solo()
    np.testing.assert_array_equal(seen[1], alone)  # every row predicted here, in input order
    with placement.solo():
        assert placement.main_process_first().__class__.__name__ == "nullcontext"


def test_a_failed_collective_names_rank_and_stage_and_other_errors_pass_unchanged(monkeypatch):
    from arena_kd.kfold import dist

    gloo = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 2000ms for recv operation")
    _launch_env(monkeypatch, world=2)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(dist.CollectiveFailure, match=r"^rank 1 of 2, stage 'distill \(hard labels\)': .*Timed out"):
        with dist.stage_guard("distill (hard labels)"):
            raise gloo
    for other in (UserError("train.csv: row 3, column 'label': bad"), ValueError("timed out"), KeyError("x")):
        with pytest.raises(type(other)) as got:
            with dist.stage_guard("teachers"):
                raise other
        assert got.value is other
    _launch_env(monkeypatch, world=1)  # one process: no launch to blame
    assert dist.collective_failure(gloo, "teachers") is None


def test_collective_timeout_is_configurable_with_a_range():
    from arena_kd.common.config import COLLECTIVE_TIMEOUT_S, load_config

    assert load_config("configs/smoke.yaml").collective_timeout_s == COLLECTIVE_TIMEOUT_S == 1800
    assert load_config("configs/smoke.yaml", overrides=["collective_timeout_s=60"]).collective_timeout_s == 60
    with pytest.raises(UserError, match="collective_timeout_s"):
        load_config("configs/smoke.yaml", overrides=["collective_timeout_s=0"])
