"""Fine-tune a 3-class preference classifier: ``train_classifier``, the entry point every model stage calls.

Batches (``llm.pair_data``): every training row is rendered once per orientation with ``data.render.render_batch``;
rows are drawn length-grouped (``llm.trainer.EpochLengthGroupedSampler``) and padded dynamically to the longest row
of the micro-batch. ``train.batch_size`` counts *rows* per micro-batch; ``swap_augmentation`` (none / random / both)
decides the orientations.

Loss (``llm.losses``): ``loss_fn(logits float[B,3], batch) -> (loss, {term: float})``, a mean over the B rows; the
trainer (``llm.trainer.ClassifierTrainer``) rescales it over the whole accumulated step and logs each term.

Resume: the run's settings hash (model except placement, train, render, seed, rows, teacher logits, the loss's
``loss_key``, the tokenizer texts) decides whether a finished run is reloaded and which checkpoints may be resumed.

Outputs under ``out_dir``: ``adapter/`` (LoRA safetensors + tokenizer + llm_info.json, or the full
model without LoRA), ``checkpoints/`` (resumable Trainer checkpoints when ``save_steps`` > 0),
``metrics.jsonl`` (one JSON object per log/eval event), ``train_result.json`` (done marker).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from transformers import TrainingArguments

from arena_kd.common.config_model import PLACEMENT_FIELDS, ModelConfig, RenderConfig, TrainConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import atomic_write_json, frame_hash, jsonable
from arena_kd.llm.batching import accepts_position_ids
from arena_kd.llm.losses import LossFn, hard_label_ce, loss_key
from arena_kd.llm.pair_data import PairCollator, PairDataset, labels_array, render_ids_spans, teacher_array
from arena_kd.llm.trainer import (
    ClassifierTrainer,
    EpochCallback,
    JsonlMetricsCallback,
    eval_metrics,
    gathered_trainable_state,
)

RESULT_FILE = "train_result.json"
METRICS_FILE = "metrics.jsonl"

CPU_OPTIMIZERS = {"paged_": "adamw_torch", "8bit": "adamw_torch", "bnb": "adamw_torch",
                  "adamw_apex_fused": "adamw_torch"}
"""CPU substitution rule for optimizers that need CUDA: any HF ``optim`` name containing one of these keys (paged and
8-bit bitsandbytes optimizers, apex) runs as the value on CPU. Same update rule (AdamW); only the optimizer-state
memory layout differs, which CPU runs (tests, the rehearsal) do not need."""


@dataclass
class TrainResult:
    adapter_dir: Path | None
    metrics: dict[str, Any]
    model: Any
    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)


def frame_texts(df: pd.DataFrame) -> list[str]:
    """All turn texts of a canonical frame (prompt, A, B), used to train a ``bpe:`` tokenizer."""
    out: list[str] = []
    for col in ("prompt", "response_a", "response_b"):
        for turns in df[col]:
            if turns is None:
                continue
            out.extend(t for t in turns if isinstance(t, str) and t)
    return out


def cpu_optimizer(name: str) -> str:
    """The optimizer a CPU run uses for ``train.optim`` (logged when it differs; see CPU_OPTIMIZERS)."""
    for key, repl in CPU_OPTIMIZERS.items():
        if key in name:
            print(f"[llm] train.optim={name} needs CUDA: using {repl} on CPU (same AdamW update, plain fp32 state)")
            return repl
    return name


def _settings_hash(model_cfg, train_cfg, render_cfg, train_df, eval_df, seed, loss_fn) -> str:
    cols = [c for c in ("id", "label") if c in train_df.columns]
    teacher = None
    if "teacher_logits" in train_df.columns and len(train_df):
        stacked = np.stack([np.asarray(v, dtype=np.float32) for v in train_df["teacher_logits"]])
        teacher = hashlib.sha256(np.ascontiguousarray(stacked).tobytes()).hexdigest()[:16]
    has_eval = eval_df is not None and len(eval_df)
    payload = {
        "model": model_cfg.model_dump(mode="json", exclude=set(PLACEMENT_FIELDS)),  # placement: not the result
        "train": train_cfg.model_dump(mode="json"),
        "render": render_cfg.model_dump(mode="json"),
        "seed": seed,
        "train_rows": frame_hash(train_df, cols) if len(train_df) else "",
        "teacher": teacher,
        "eval_rows": frame_hash(eval_df, [c for c in ("id",) if c in eval_df.columns]) if has_eval else "",
        "loss_fn": loss_key(loss_fn),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _checkpoints_for(ckpt_dir: Path, settings: str) -> Path | None:
    """Latest resumable checkpoint written with the same settings; stale ones (other settings) are removed."""
    marker = ckpt_dir / "settings.json"
    same = marker.is_file() and json.loads(marker.read_text()).get("settings") == settings
    if int(os.environ.get("RANK", "0")) != 0:  # the main process cleans up; the others only look
        return _latest_checkpoint(ckpt_dir) if same else None
    if ckpt_dir.is_dir() and not same:
        stale = list(ckpt_dir.glob("checkpoint-*"))
        if stale:
            print(f"[llm] {ckpt_dir}: {len(stale)} checkpoint(s) from other settings removed (not resumable)")
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"settings": settings})
    return _latest_checkpoint(ckpt_dir)


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    if not found:
        return None
    return max(found, key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)


def _datasets(train_df: pd.DataFrame, eval_df: pd.DataFrame | None, tokenizer, max_length: int, rc: RenderConfig,
              swap: str, where: str, unlabelled_ok: bool = False) -> tuple[PairDataset, PairDataset | None]:
    """The training rows (both orientations rendered unless swap is 'none') and the labelled eval rows (or None).
    ``unlabelled_ok``: the loss takes rows without a hard label (label -100; e.g. student.losses), else refused."""
    ids, spans = render_ids_spans(train_df, tokenizer, max_length, rc, swap=False)
    ids_sw, spans_sw = render_ids_spans(train_df, tokenizer, max_length, rc, swap=True) if swap != "none" else (None,
                                                                                                                None)
    data = PairDataset(ids, ids_sw, labels_array(train_df, where + " (train)", required=not unlabelled_ok),
                       teacher_array(train_df, where + " (train)"), spans, spans_sw)
    eval_data = None
    if eval_df is not None and len(eval_df):
        ev = eval_df[eval_df["label"].notna()].reset_index(drop=True)
        if len(ev):
            ev_ids, ev_spans = render_ids_spans(ev, tokenizer, max_length, rc, swap=False)
            eval_data = PairDataset(ev_ids, None, labels_array(ev, where + " (eval)", False),
                                    teacher_array(ev, where + " (eval)"), ev_spans)
    return data, eval_data


def _training_arguments(model_cfg: ModelConfig, train_cfg: TrainConfig, out: Path, *, seed: int, dtype: str,
                        on_cpu: bool, optim: str, eval_steps: int | None, progress: bool) -> TrainingArguments:
    from arena_kd.llm.placement import launch_world_size

    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=max(train_cfg.batch_size * 2, 1),
        gradient_accumulation_steps=train_cfg.grad_accum,
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps,
        learning_rate=train_cfg.learning_rate,
        weight_decay=train_cfg.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=train_cfg.warmup_ratio,  # < 1: a fraction of the total steps
        max_grad_norm=train_cfg.max_grad_norm,
        optim=optim,
        logging_steps=train_cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if train_cfg.save_steps else "no",
        save_steps=train_cfg.save_steps or 500,
        save_total_limit=2,
        report_to=list(train_cfg.report_to) or "none",
        seed=seed,
        data_seed=seed,
        bf16=dtype == "bf16" or train_cfg.autocast == "bf16",  # fp32 weights + bf16 autocast (accelerate)
        fp16=dtype == "fp16",
        use_cpu=on_cpu,
        remove_unused_columns=False,
        label_names=["labels"],
        gradient_checkpointing=model_cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if model_cfg.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if train_cfg.group_by_length else "random",
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        # under a launch: keep the process state started above (gloo on CPU; the FSDP rehearsal label, llm.placement)
        accelerator_config={"use_configured_state": True} if launch_world_size() > 1 else None,
    )


def train_classifier(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    render_cfg: RenderConfig,
    train_df: pd.DataFrame,
    eval_df: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    seed: int,
    workdir: str | Path,
    loss_fn: LossFn | None = None,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
    callbacks: list | None = None,
    tokenizer_texts: list[str] | None = None,
    init_seed: int | None = None,
) -> TrainResult:
    """Fine-tune ``model_cfg`` on ``train_df`` (evaluating on ``eval_df``); returns the adapter, metrics and the model.

    resume=True: a finished run with the same settings (``train_result.json``) is reloaded instead of
    retrained; an interrupted run continues from its latest checkpoint under ``out_dir/checkpoints``.
    ``tokenizer_texts``: texts a ``bpe:`` tokenizer is trained on (default: this frame's texts); pass the whole
    data set's texts so every fold shares one tokenizer (needed for fold-soup averaging).
    ``init_seed`` (default ``seed``) draws the fresh classification head and LoRA A: the k-fold callers pass the
    same value for every fold, so all fold adapters start from one initialisation (what a fold soup assumes);
    ``seed`` then drives only the data order, swap draws and dropout.
    """
    from transformers import set_seed

    from arena_kd.llm.devices import resolve_device
    from arena_kd.llm.loading import load_classifier
    from arena_kd.llm.lora import save_adapter
    from arena_kd.llm.placement import (
        check_sharded_training,
        fresh_accelerator_state,
        main_process_first,
        start_launch_state,
    )
    from arena_kd.llm.tokenizer import texts_hash

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loss_fn = loss_fn or hard_label_ce
    if len(train_df) == 0:
        raise UserError(f"{out}: no training rows")
    max_length = train_cfg.max_length or render_cfg.max_length
    init_seed = seed if init_seed is None else int(init_seed)
    seeds = seed if init_seed == seed else (seed, init_seed)
    settings = _settings_hash(model_cfg, train_cfg, render_cfg, train_df, eval_df, seeds, loss_fn)
    if tokenizer_texts is not None:
        texts = texts_hash([t for t in tokenizer_texts if isinstance(t, str)])
        settings = hashlib.sha256(f"{settings}:{texts}".encode()).hexdigest()[:16]
    done = out / RESULT_FILE
    adapter_dir = out / "adapter"
    if resume and done.is_file():
        rec = json.loads(done.read_text())
        if rec.get("settings") == settings and adapter_dir.is_dir():
            model, tok, info = load_classifier(model_cfg, training=False, workdir=workdir, adapter=adapter_dir,
                                               device=device)
            print(f"[llm] {out}: finished earlier with the same settings; loaded {adapter_dir}")
            return TrainResult(adapter_dir, rec.get("metrics", {}), model, tok, info)

    check_sharded_training(model_cfg, train_cfg.optim, train_cfg.save_steps)
    # process group up before loading (main-first caches)
    start_launch_state(on_cpu=resolve_device(device).type == "cpu")
    set_seed(init_seed)  # head and LoRA A are drawn here: the same for every fold of a k-fold run
    model, tokenizer, info = load_classifier(
        model_cfg, training=True, workdir=workdir, device=device,
        train_texts=list(tokenizer_texts) if tokenizer_texts is not None else frame_texts(train_df), seed=init_seed
    )
    set_seed(seed)  # from here on: data order, swaps, dropout
    rc = render_cfg
    data, eval_data = _datasets(train_df, eval_df, tokenizer, max_length, rc, train_cfg.swap_augmentation, str(out),
                                unlabelled_ok=bool(getattr(loss_fn, "takes_unlabelled_rows", False)))
    use_pos = accepts_position_ids(model)
    collator = PairCollator(tokenizer.pad_token_id, info["padding_side"], train_cfg.swap_augmentation, seed, use_pos)

    on_cpu = info["device"].startswith("cpu")
    optim = cpu_optimizer(train_cfg.optim) if on_cpu else train_cfg.optim
    eval_steps = train_cfg.eval_steps if (train_cfg.eval_steps and eval_data is not None) else None
    fresh_accelerator_state()  # FSDP wrap classes and QLoRA dtype policy from this model, not an earlier one
    args = _training_arguments(model_cfg, train_cfg, out, seed=seed, dtype=info["dtype"], on_cpu=on_cpu, optim=optim,
                               eval_steps=eval_steps, progress=progress)
    trainer = ClassifierTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=eval_data,
        data_collator=collator,
        compute_metrics=eval_metrics,
        callbacks=[EpochCallback(collator), JsonlMetricsCallback(out / METRICS_FILE), *(callbacks or [])],
        loss_fn=loss_fn,
        head_learning_rate=train_cfg.head_learning_rate,
        lengths=data.lengths,
    )
    ckpt = None
    if resume:
        with main_process_first():  # rank 0 decides (removes stale checkpoints, marks settings); the others then look
            ckpt = _checkpoints_for(out / "checkpoints", settings)
    if ckpt is not None:
        print(f"[llm] resuming from {ckpt}")
    t0 = time.time()
    train_out = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    metrics: dict[str, Any] = {k: v for k, v in train_out.metrics.items()}
    metrics["global_step"] = trainer.state.global_step
    metrics["resumed_from"] = str(ckpt) if ckpt is not None else None
    if eval_data is not None:
        metrics.update(trainer.evaluate())
    metrics["wall_time_s"] = round(time.time() - t0, 3)
    metrics["trainable_params"] = info["trainable_params"]
    metrics["trainable_fraction"] = info["trainable_fraction"]
    model = trainer.model
    if train_cfg.autocast == "bf16" and info["dtype"] == "fp32":
        # accelerate wrapped forward in a bf16 autocast for training; the weights are fp32, so the model handed back
        # computes in fp32 like the export (its reference probabilities are checked against an fp32 load at 1e-3)
        # and like a reload; predict.autocast decides bf16 at prediction. Where weights are fp16 (GPU QLoRA) the
        # wrapper stays: the fp32 head and LoRA weights need it to meet fp16 activations.
        trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    model.eval()
    info = {**info, "max_length": max_length, "render": rc.model_dump(mode="json"), "seed": seed,
            "init_seed": init_seed, "optim": optim}
    gathered = gathered_trainable_state(trainer)  # a collective under FSDP: every rank takes part
    if trainer.is_world_process_zero():
        save_adapter(trainer.accelerator.unwrap_model(model), adapter_dir, tokenizer, info, state_dict=gathered)
        atomic_write_json(done, {"settings": settings, "metrics": jsonable(metrics), "adapter_dir": str(adapter_dir)})
    return TrainResult(adapter_dir, metrics, model, tokenizer, info)
