"""Multi-process teachers on 2 CPU processes (gloo), launched the way users launch them: `accelerate launch`.

* data parallel (configs/accelerate/cpu-2proc.yaml): both ranks train, only rank 0 writes, the fold files are valid,
  and the OOF logits equal a single-process run with the same global batch (2 x 4 rows = 1 x 8 rows);
* FSDP-QLoRA (configs/accelerate/fsdp-qlora-cpu.yaml, FSDP2 fully_shard, NF4 4-bit base, LoRA): both ranks train a
  sharded model, the sharded model predicts the held-out fold in lockstep although the ranks hold different
  numbers of batches, and the saved (gathered) adapter reloaded in one process predicts the same logits.

Each launch records per rank what it did through tests/_dist_probe.py (world size, sharding, rows trained, files
written, forwards run while predicting). One teacher, a tiny random Llama, 48 rows, 2 folds: ~20 s per launch.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _dist_launch import REPO, balanced_folds_file, launch_env, launch_probe, writes_under

from arena_kd.common.io import read_keyed_table

SMOKE = REPO / "configs" / "smoke.yaml"
LOGITS = ["logit_a", "logit_b", "logit_tie"]
LN3 = math.log(3)


def _teacher(batch_size: int, quantization: str = "none", hidden: int = 32, answer_pooling: bool = False,
             **predict) -> str:
    """One tiny random Llama teacher as a YAML flow list (the config's teachers.models)."""
    pred = ", ".join(f"{k}: {v}" for k, v in predict.items())
    return (
        "[{name: tiny-llama, model: {backbone: random, tokenizer: 'bpe:400', quantization: " + quantization + ", "
        "answer_pooling: " + str(answer_pooling).lower() + ", "
        "random_init: {model_type: llama, hidden_size: " + str(hidden) + ", "
        "intermediate_size: " + str(2 * hidden) + ", "
        "num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1}, gradient_checkpointing: false, "
        "lora: {r: 8, alpha: 16, dropout: 0.0}}, "
        "train: {epochs: 3, batch_size: " + str(batch_size) + ", "
        "grad_accum: 1, learning_rate: 1.0e-2, warmup_ratio: 0.0, "
        "logging_steps: 1, swap_augmentation: none}, predict: {" + pred + "}}]"
    )


def _config(workdir: Path, folds: Path | None, teacher: str) -> Path:
    """configs/smoke.yaml with only the one teacher (and no optional extra teacher passes), written next to workdir."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["workdir"] = str(workdir)
    raw["teachers"] = {"models": yaml.safe_load(teacher), "combine": raw["teachers"].get("combine", {})}
    if folds is not None:
        raw.setdefault("folds", {})["file"] = str(folds)
    path = workdir.with_name(workdir.name + ".yaml")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _launch(config: str, record: Path, workdir: Path, folds: Path | None, teacher: str) -> dict[int, dict]:
    return launch_probe(config, record, ["teachers", "--config", str(_config(workdir, folds, teacher))])[1]


@pytest.fixture(scope="module")
def balanced_folds(tmp_path_factory) -> Path:
    return balanced_folds_file(tmp_path_factory.mktemp("folds"), SMOKE)


def _read_oof(workdir: Path) -> tuple[pd.DataFrame, dict]:
    return read_keyed_table(workdir / "teachers" / "tiny-llama" / "oof.parquet")


def _check_fold_files(workdir: Path, folds: Path | None) -> None:
    """Every fold file holds exactly its held-out ids, finite logits, and a sidecar with metrics and hashes."""
    fold_of = pd.read_csv(folds or workdir / "folds.csv", dtype={"id": str}).set_index("id")["fold"]
    for k in (0, 1):
        df, meta = read_keyed_table(workdir / "teachers" / "tiny-llama" / f"fold{k}.parquet")
        assert sorted(df["id"]) == sorted(fold_of.index[fold_of == k]), k
        assert np.isfinite(df[LOGITS].to_numpy()).all()
        assert meta["fold"] == k and meta["metrics"]["rows"] == len(df)
        assert set(meta["hashes"]) >= {"config", "data", "folds"}
        assert (workdir / "teachers" / "tiny-llama" / f"fold{k}" / "adapter" / "adapter_model.safetensors").is_file()


def test_data_parallel_two_cpu_processes_match_one_process(tmp_path, balanced_folds):
    teacher_dp = _teacher(batch_size=4)  # 2 ranks x 4 rows = global batch 8
    rec = _launch("cpu-2proc.yaml", tmp_path / "rec", tmp_path / "dp", balanced_folds, teacher_dp)

    for r in (0, 1):  # both ranks trained both folds, in one gloo group of 2, on half of every global batch
        calls = rec[r]["train_calls"]
        assert [c["world"] for c in calls] == [2, 2] and {c["backend"] for c in calls} == {"gloo"}
        assert [c["global_step"] for c in calls] == [9, 9]  # 3 epochs x 24 rows / 8
        assert [c["rows"] for c in calls] == [36, 36]  # 9 steps x 4 rows on each rank
        assert not any(c["is_fsdp_enabled"] or c["sharded"] for c in calls)
    assert writes_under(rec[1], tmp_path / "dp") == []  # only rank 0 wrote
    assert any(w.endswith("fold1.parquet") for w in writes_under(rec[0], tmp_path / "dp"))
    _check_fold_files(tmp_path / "dp", balanced_folds)

    single = subprocess.run([sys.executable, "-m", "arena_kd.cli", "teachers", "--config",
                             str(_config(tmp_path / "one", balanced_folds, _teacher(batch_size=8)))],
                            cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    dp, dp_meta = _read_oof(tmp_path / "dp")
    one, one_meta = _read_oof(tmp_path / "one")
    # the model learned something, so equal losses are not two untrained models at ln 3
    assert one_meta["overall"]["log_loss"] < LN3 - 0.05
    # tolerance: same rows per global batch, same order and init; only the gloo all-reduce adds float rounding
    # (measured: 2.4e-7 max |logit| difference, identical OOF log loss to 4 decimals)
    assert abs(dp_meta["overall"]["log_loss"] - one_meta["overall"]["log_loss"]) < 1e-3
    np.testing.assert_allclose(dp[LOGITS].to_numpy(), one.set_index("id").loc[dp["id"], LOGITS].to_numpy(),
                               atol=1e-3, rtol=0)


@pytest.mark.parametrize("launch, quantization", [("cpu-2proc.yaml", "none"), ("fsdp-qlora-cpu.yaml", "4bit")])
def test_answer_pooling_reaches_the_model_under_data_parallel_and_fsdp(tmp_path, launch, quantization):
    """The Trainer wraps the model (DistributedDataParallel; FSDP2 in place): the answers' spans must still reach
    the pooling hook, which refuses a forward without them (before the fix the data-parallel launch failed so)."""
    wd = tmp_path / "wd"
    _launch(launch, tmp_path / "rec", wd, None, _teacher(batch_size=4, quantization=quantization, hidden=64,
                                                         answer_pooling=True))
    _check_fold_files(wd, None)
    oof, meta = _read_oof(wd)
    assert len(oof) == 48 and np.isfinite(oof[LOGITS].to_numpy()).all() and meta["overall"]["log_loss"] < 2.0


def test_fsdp_qlora_two_cpu_processes_shard_train_and_predict_in_lockstep(tmp_path):
    from arena_kd.common.config import load_config
    from arena_kd.kfold.fold_model import predict_rows
    from arena_kd.kfold.training_data import load_training_data
    from arena_kd.llm.loading import load_classifier

    # the smoke folds hold out 25 and 23 rows: ranks get 13+12 and 12+11 rows; one row per batch makes their batch
    # counts differ by one, which would leave the busier rank waiting in an all-gather without the lockstep
    teacher = _teacher(batch_size=4, quantization="4bit", hidden=64, max_batch_size=1, tta="false")
    wd = tmp_path / "fsdp"
    rec = _launch("fsdp-qlora-cpu.yaml", tmp_path / "rec", wd, None, teacher)

    held_out = pd.read_csv(wd / "folds.csv")["fold"].value_counts().sort_index().tolist()
    assert sorted(n % 2 for n in held_out) == [1, 1]  # odd fold sizes: the uneven case is really exercised
    for r in (0, 1):
        calls = rec[r]["train_calls"]
        assert [c["world"] for c in calls] == [2, 2]
        assert all(c["is_fsdp_enabled"] and c["sharded"] for c in calls)  # FSDP2 DTensor shards, not data parallel
        assert all(c["global_step"] > 0 and c["rows"] > 0 for c in calls)
    assert [c["global_step"] for c in rec[0]["train_calls"]] == [c["global_step"] for c in rec[1]["train_calls"]]
    # a sharded forward is a collective: both ranks ran as many forwards as the busier one (ceil(n / 2) rows)
    assert rec[0]["predict_forwards"] == rec[1]["predict_forwards"] == [math.ceil(n / 2) for n in held_out]
    assert writes_under(rec[1], wd) == []
    _check_fold_files(wd, None)

    # the adapter gathered from the shards, reloaded in this (single) process, predicts what the sharded model did
    cfg = load_config(_config(wd, None, teacher))
    t = cfg.teachers.models[0]
    data = load_training_data(cfg)
    for k in (0, 1):
        valid = data.frame[data.frame["fold"] == k].reset_index(drop=True)
        model, tok, info = load_classifier(t.model, training=False, workdir=wd,
                                           adapter=wd / "teachers" / "tiny-llama" / f"fold{k}" / "adapter",
                                           device="cpu")
        assert info["quantization"] == "4bit"
        mine = predict_rows(model, tok, valid, t.predict, cfg.render)["orig"]
        fold, _ = read_keyed_table(wd / "teachers" / "tiny-llama" / f"fold{k}.parquet")
        orig = ["orig_logit_a", "orig_logit_b", "orig_logit_tie"]
        theirs = fold.set_index("id").loc[valid["id"].astype(str), orig].to_numpy()
        np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=0)
