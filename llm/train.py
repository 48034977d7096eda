"""Fine-tune a 3-class preference classifier with a ``transformers.Trainer`` subclass and a pluggable loss.

Batches: every training row is rendered once per orientation with ``data.render.render_batch``;
rows are drawn length-grouped (HF ``LengthGroupedSampler``) and padded dynamically to the longest
row of the micro-batch. ``train.batch_size`` counts *rows* per micro-batch; with
``swap_augmentation: both`` each row contributes both orientations to the same micro-batch (2x the
sequences), with ``random`` each row is swapped with p=0.5 (seeded per row and epoch, so a resumed
run draws the same orientations), with ``none`` never. A swap exchanges the A/B label (tie stays)
and index 0<->1 on the last axis of ``teacher_logits``.

Loss: ``loss_fn(logits float[B,3], batch) -> (loss, {term: float})`` where ``batch["labels"]`` is
long[B] and ``batch["teacher_logits"]`` float[B,3] or float[B,k,3] when the training frame has a
``teacher_logits`` column; the loss is a mean over the B rows. The trainer rescales it to
``sum / rows in the whole accumulated step`` (``num_items_in_batch``), so uneven micro-batches and
gradient accumulation give the same gradient as one big batch. Each returned term is logged.

Outputs under ``out_dir``: ``adapter/`` (LoRA safetensors + tokenizer + llm_info.json, or the full
model without LoRA), ``checkpoints/`` (resumable Trainer checkpoints when ``save_steps`` > 0),
``metrics.jsonl`` (one JSON object per log/eval event), ``train_result.json`` (done marker).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from arena_kd.common.config_model import PLACEMENT_FIELDS, ModelConfig, RenderConfig, TrainConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import atomic_write_json, jsonable
from arena_kd.llm.batching import accepts_position_ids, collate

SWAP_LABEL = torch.tensor([1, 0, 2])
SWAP_INDEX = [1, 0, 2]
RESULT_FILE = "train_result.json"
METRICS_FILE = "metrics.jsonl"

LossFn = Callable[[torch.Tensor, dict], "tuple[torch.Tensor, dict[str, float]]"]


class HardLabelCE:
    """Default loss: mean cross-entropy of logits float[B,3] (fp32 inside) against batch["labels"] long[B]."""

    def name(self) -> str:
        return "hard_label_ce"

    def resume_key(self) -> str:
        return "llm.train|hard_label_ce"  # frozen at its key before issue 15 moved the module: finished runs stay valid

    def __call__(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.cross_entropy(logits.float(), batch["labels"])
        return loss, {"ce": float(loss.detach())}


hard_label_ce = HardLabelCE()


@dataclass
class TrainResult:
    adapter_dir: Path | None
    metrics: dict[str, Any]
    model: Any
    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def frame_texts(df: pd.DataFrame) -> list[str]:
    """All turn texts of a canonical frame (prompt, A, B), used to train a ``bpe:`` tokenizer."""
    out: list[str] = []
    for col in ("prompt", "response_a", "response_b"):
        for turns in df[col]:
            if turns is None:
                continue
            out.extend(t for t in turns if isinstance(t, str) and t)
    return out


def _labels(df: pd.DataFrame, where: str, required: bool) -> np.ndarray:
    lab = df["label"]
    if lab.isna().any():
        if required:
            row = int(np.flatnonzero(lab.isna().to_numpy())[0])
            raise UserError(f"{where}: row {row}, column 'label': missing label in a training frame")
    return lab.fillna(-100).astype(int).to_numpy()


def _teacher_array(df: pd.DataFrame, where: str) -> np.ndarray | None:
    if "teacher_logits" not in df.columns:
        return None
    rows = []
    shape = None
    for i, v in enumerate(df["teacher_logits"]):
        a = np.asarray(v, dtype=np.float32)
        if shape is None:
            shape = a.shape
        if a.shape != shape or a.shape[-1] != 3 or a.ndim not in (1, 2) or not np.isfinite(a).all():
            raise UserError(f"{where}: row {i}, column 'teacher_logits': expected finite shape (3,) or (k,3) like row 0 {shape}, got {a.shape}")
        rows.append(a)
    return np.stack(rows) if rows else np.zeros((0, 3), dtype=np.float32)


class PairDataset(torch.utils.data.Dataset):
    """Rendered rows of a pair frame; item = {"ids", "ids_swapped" (None for eval), "label", "teacher" (or None)}."""

    def __init__(self, ids: list[list[int]], ids_swapped: list[list[int]] | None, labels: np.ndarray, teacher: np.ndarray | None):
        self.ids, self.ids_swapped, self.labels, self.teacher = ids, ids_swapped, labels, teacher
        self.lengths = [len(x) for x in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "row": int(i),
            "ids": self.ids[i],
            "ids_swapped": self.ids_swapped[i] if self.ids_swapped is not None else None,
            "label": int(self.labels[i]),
            "teacher": self.teacher[i] if self.teacher is not None else None,
        }


def _flip(seed: int, epoch: int, row: int) -> bool:
    h = hashlib.blake2b(f"{seed}:{epoch}:{row}".encode(), digest_size=2).digest()
    return bool(h[0] & 1)


class PairCollator:
    """Dataset items -> padded model batch with labels long[B'] and teacher_logits float[B',(k,)3].

    swap: "none" | "random" | "both" (see module doc); items without swapped ids (eval) are never swapped.
    ``epoch`` is set by :class:`EpochCallback`.
    """

    def __init__(self, pad_token_id: int, padding_side: str, swap: str, seed: int, position_ids: bool):
        self.pad, self.side, self.swap, self.seed, self.position_ids = pad_token_id, padding_side, swap, seed, position_ids
        self.epoch = 0

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs, labels, teach = [], [], []
        for it in items:
            if it["ids_swapped"] is None or self.swap == "none":
                orients = [False]
            elif self.swap == "both":
                orients = [False, True]
            else:
                orients = [_flip(self.seed, self.epoch, it["row"])]
            for sw in orients:
                seqs.append(it["ids_swapped"] if sw else it["ids"])
                y = it["label"]
                labels.append(y if (not sw or y < 0) else int(SWAP_LABEL[y]))
                if it["teacher"] is not None:
                    t = it["teacher"]
                    teach.append(t[..., SWAP_INDEX] if sw else t)
        batch = collate(seqs, self.pad, self.side, with_position_ids=self.position_ids)
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if teach:
            batch["teacher_logits"] = torch.from_numpy(np.ascontiguousarray(np.stack(teach))).float()
        return batch


# --------------------------------------------------------------------------- trainer


class EpochCallback(TrainerCallback):
    def __init__(self, collator: PairCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kw):
        self.collator.epoch = int(math.floor(state.epoch or 0))


class JsonlMetricsCallback(TrainerCallback):
    """Append every log / eval event as one JSON line to ``path`` (main process only)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        rec = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        rec.update({k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in logs.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()


def eval_metrics(eval_pred) -> dict[str, float]:
    """Multiclass log loss and accuracy of eval logits [n,3] (rows with label -100 ignored)."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    labels = eval_pred.label_ids
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    if not len(labels):
        return {}
    m = logits.max(axis=1, keepdims=True)
    lsm = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    return {
        "log_loss": float(-lsm[np.arange(len(labels)), labels].mean()),
        "accuracy": float((logits.argmax(axis=1) == labels).mean()),
    }


class EpochLengthGroupedSampler(torch.utils.data.Sampler):
    """HF ``LengthGroupedSampler`` whose shuffle is seeded by (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        from transformers.trainer_pt_utils import LengthGroupedSampler

        self.generator = torch.Generator()
        self.seed = seed
        self.inner = LengthGroupedSampler(batch_size, lengths=list(lengths), generator=self.generator)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + int(epoch))

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        return iter(self.inner)


class ClassifierTrainer(Trainer):
    """HF Trainer whose loss is ``loss_fn(logits[B,3], batch)``, normalised over the accumulated step."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_fn: LossFn, lengths: list[int] | None = None, **kw):
        super().__init__(*args, **kw)
        self.loss_fn = loss_fn
        self.lengths = lengths
        self.model_accepts_loss_kwargs = True  # makes Trainer count rows per accumulated step (num_items_in_batch)
        self._terms: dict[str, float] = {}
        self._term_rows = 0

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy == "group_by_length" and self.lengths is not None:
            seed = int(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
            return EpochLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps, self.lengths, seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        return torch.utils.data.SequentialSampler(eval_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        batch = {"labels": labels}
        if "teacher_logits" in inputs:
            batch["teacher_logits"] = inputs.pop("teacher_logits")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss, terms = self.loss_fn(logits.float(), batch)
        rows = labels.shape[0]
        if model.training:
            for k, v in terms.items():
                self._terms[k] = self._terms.get(k, 0.0) + float(v) * rows
            self._term_rows += rows
        if num_items_in_batch is not None:
            n = num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
            loss = loss * rows / n
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes
        elif model.training:
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_rows:
            for k, v in self._terms.items():
                logs[f"loss_{k}"] = round(v / self._term_rows, 6)
            self._terms, self._term_rows = {}, 0
        super().log(logs, start_time)


# --------------------------------------------------------------------------- entry point


def _settings_hash(model_cfg, train_cfg, render_cfg, train_df, eval_df, seed, loss_fn) -> str:
    from arena_kd.common.io import frame_hash

    cols = [c for c in ("id", "label") if c in train_df.columns]
    payload = {
        "model": model_cfg.model_dump(mode="json", exclude=set(PLACEMENT_FIELDS)),  # placement: not the result
        "train": train_cfg.model_dump(mode="json"),
        "render": render_cfg.model_dump(mode="json"),
        "seed": seed,
        "train_rows": frame_hash(train_df, cols) if len(train_df) else "",
        "teacher": hashlib.sha256(np.ascontiguousarray(np.stack([np.asarray(v, dtype=np.float32) for v in train_df["teacher_logits"]])).tobytes()).hexdigest()[:16]
        if "teacher_logits" in train_df.columns and len(train_df) else None,
        "eval_rows": frame_hash(eval_df, [c for c in ("id",) if c in eval_df.columns]) if eval_df is not None and len(eval_df) else "",
        "loss_fn": loss_key(loss_fn),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def loss_key(loss_fn) -> str:
    """Identity of a loss for resume decisions: the loss's own ``resume_key()`` (the shipped losses name themselves),
    else a ``cache_key`` attribute, else module + qualname + simple closure values (a user's plain function)."""
    if loss_fn is None:
        return "ce"
    if callable(getattr(loss_fn, "resume_key", None)):
        return str(loss_fn.resume_key())
    key = getattr(loss_fn, "cache_key", None)
    if key is not None:
        return str(key)
    parts = [getattr(loss_fn, "__module__", ""), getattr(loss_fn, "__qualname__", type(loss_fn).__name__)]
    for cell in getattr(loss_fn, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:  # empty cell
            continue
        if isinstance(v, (int, float, str, bool, type(None), tuple, list, dict)):
            parts.append(repr(v))
        elif isinstance(v, np.ndarray) or torch.is_tensor(v):
            parts.append(hashlib.sha256(np.asarray(v.cpu() if torch.is_tensor(v) else v).tobytes()).hexdigest()[:12])
    return "|".join(parts)


def _checkpoints_for(ckpt_dir: Path, settings: str) -> Path | None:
    """Latest resumable checkpoint written with the same settings; stale ones (other settings) are removed."""
    import os
    import shutil

    marker = ckpt_dir / "settings.json"
    if int(os.environ.get("RANK", "0")) != 0:  # the main process cleans up; the others only look
        return _latest_checkpoint(ckpt_dir) if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings else None
    if ckpt_dir.is_dir() and (not marker.is_file() or json.loads(marker.read_text()).get("settings") != settings):
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

    from arena_kd.llm.loading import load_classifier
    from arena_kd.llm.lora import save_adapter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loss_fn = loss_fn or hard_label_ce
    if len(train_df) == 0:
        raise UserError(f"{out}: no training rows")
    max_length = train_cfg.max_length or render_cfg.max_length
    init_seed = seed if init_seed is None else int(init_seed)
    settings = _settings_hash(model_cfg, train_cfg, render_cfg, train_df, eval_df, seed if init_seed == seed else (seed, init_seed), loss_fn)
    if tokenizer_texts is not None:
        from arena_kd.llm.tokenizer import texts_hash

        settings = hashlib.sha256(f"{settings}:{texts_hash([t for t in tokenizer_texts if isinstance(t, str)])}".encode()).hexdigest()[:16]
    done = out / RESULT_FILE
    adapter_dir = out / "adapter"
    if resume and done.is_file():
        rec = json.loads(done.read_text())
        if rec.get("settings") == settings and adapter_dir.is_dir():
            model, tok, info = load_classifier(model_cfg, training=False, workdir=workdir, adapter=adapter_dir, device=device)
            print(f"[llm] {out}: finished earlier with the same settings; loaded {adapter_dir}")
            return TrainResult(adapter_dir, rec.get("metrics", {}), model, tok, info)

    from arena_kd.llm.devices import resolve_device
    from arena_kd.llm.placement import check_sharded_training, launch_world_size, start_launch_state

    check_sharded_training(model_cfg, train_cfg.optim, train_cfg.save_steps)
    start_launch_state(on_cpu=resolve_device(device).type == "cpu")  # process group up before loading (main-first caches)
    set_seed(init_seed)  # head and LoRA A are drawn here: the same for every fold of a k-fold run
    model, tokenizer, info = load_classifier(
        model_cfg, training=True, workdir=workdir, device=device,
        train_texts=list(tokenizer_texts) if tokenizer_texts is not None else frame_texts(train_df), seed=init_seed
    )
    set_seed(seed)  # from here on: data order, swaps, dropout
    rc = render_cfg
    where = str(out)
    ids = _render(train_df, tokenizer, max_length, rc, swap=False)
    ids_sw = _render(train_df, tokenizer, max_length, rc, swap=True) if train_cfg.swap_augmentation != "none" else None
    data = PairDataset(ids, ids_sw, _labels(train_df, where + " (train)", required=True), _teacher_array(train_df, where + " (train)"))
    use_pos = accepts_position_ids(model)
    collator = PairCollator(tokenizer.pad_token_id, info["padding_side"], train_cfg.swap_augmentation, seed, use_pos)

    eval_data = None
    if eval_df is not None and len(eval_df):
        ev = eval_df[eval_df["label"].notna()].reset_index(drop=True)
        if len(ev):
            eval_data = PairDataset(_render(ev, tokenizer, max_length, rc, swap=False), None, _labels(ev, where + " (eval)", False),
                                    _teacher_array(ev, where + " (eval)"))

    dtype = info["dtype"]
    on_cpu = info["device"].startswith("cpu")
    optim = cpu_optimizer(train_cfg.optim) if on_cpu else train_cfg.optim
    eval_steps = train_cfg.eval_steps if (train_cfg.eval_steps and eval_data is not None) else None
    args = TrainingArguments(
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
        bf16=dtype == "bf16",
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
    trainer = ClassifierTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=eval_data,
        data_collator=collator,
        compute_metrics=eval_metrics,
        callbacks=[EpochCallback(collator), JsonlMetricsCallback(out / METRICS_FILE), *(callbacks or [])],
        loss_fn=loss_fn,
        lengths=data.lengths,
    )
    ckpt = _checkpoints_for(out / "checkpoints", settings) if resume else None
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
    model.eval()
    info = {**info, "max_length": max_length, "render": rc.model_dump(mode="json"), "seed": seed, "init_seed": init_seed, "optim": optim}
    gathered = _gathered_trainable_state(trainer)  # a collective under FSDP: every rank takes part
    if trainer.is_world_process_zero():
        save_adapter(trainer.accelerator.unwrap_model(model), adapter_dir, tokenizer, info, state_dict=gathered)
        atomic_write_json(done, {"settings": settings, "metrics": jsonable(metrics), "adapter_dir": str(adapter_dir)})
    return TrainResult(adapter_dir, metrics, model, tokenizer, info)


CPU_OPTIMIZERS = {"paged_": "adamw_torch", "8bit": "adamw_torch", "bnb": "adamw_torch", "adamw_apex_fused": "adamw_torch"}
"""CPU substitution rule for optimizers that need CUDA: any HF ``optim`` name containing one of these keys (paged and
8-bit bitsandbytes optimizers, apex) runs as the value on CPU. Same update rule (AdamW); only the optimizer-state
memory layout differs, which CPU runs (tests, the rehearsal) do not need."""


def cpu_optimizer(name: str) -> str:
    """The optimizer a CPU run uses for ``train.optim`` (logged when it differs; see CPU_OPTIMIZERS)."""
    for key, repl in CPU_OPTIMIZERS.items():
        if key in name:
            print(f"[llm] train.optim={name} needs CUDA: using {repl} on CPU (same AdamW update, plain fp32 state)")
            return repl
    return name


def _gathered_trainable_state(trainer) -> dict | None:
    """Full (unsharded) trained weights of an FSDP-wrapped model on rank 0 ({} elsewhere); None when not sharded.

    Every rank must call it (the shards are gathered). Only trainable tensors (LoRA, score head) are gathered: the
    frozen 4-bit base is the checkpoint it was loaded from. Always a full state dict, whatever the launch's
    ``fsdp_state_dict_type`` (which governs the resumable checkpoints): prediction, fold soup and export read the
    adapter as one file.
    """
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if trainer.accelerator.is_fsdp2:
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return get_model_state_dict(trainer.model, options=opts)
    return trainer.accelerator.get_state_dict(trainer.model)  # FSDP1: accelerate gathers a full state dict on rank 0


def _render(df: pd.DataFrame, tokenizer, max_length: int, rc: RenderConfig, swap: bool) -> list[list[int]]:
    from arena_kd.data.render import render_batch

    return render_batch(df, tokenizer, max_length, rc.truncation, rc.prompt_fraction, swap=swap, template=rc.template)
