"""The HF ``Trainer`` a classifier trains with: a pluggable loss normalised over the accumulated step, per-term loss
logs, a length-grouped sampler seeded by (seed, epoch) so a resumed run sees the same order, epoch-aware swap draws,
metrics appended to a JSONL file, and the trained weights gathered from FSDP shards.

Loss rescaling: the loss (a mean over its B rows) becomes ``sum / rows in the whole accumulated step``
(``num_items_in_batch``), so uneven micro-batches and gradient accumulation give the same gradient as one big batch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from arena_kd.llm.answer_pooling import answer_spans
from arena_kd.llm.head import classification_head
from arena_kd.llm.losses import LossFn
from arena_kd.llm.pair_data import PairCollator


class EpochCallback(TrainerCallback):
    """Tells the collator the epoch, so random swap draws are seeded per (row, epoch) and survive a resume."""

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
    """HF ``LengthGroupedSampler`` whose shuffle is seeded by (seed, epoch), so a resumed run sees the same order, and
    whose steps come in random order.

    HF sorts each mega-batch (up to 50 steps) from long to short rows, so every epoch walks long -> short again and
    again and ends on the shortest rows of its last mega-batch. Length is not neutral here: on the sample the short
    rows are HH pairs (never a tie), and the Gemma, Gemma-9-layer and MiniLM fold models trained on one fold of
    demo-full all ended predicting 3-5% ties on unseen MT-Bench rows (21% in training; MT-Bench log loss 1.31-1.50,
    the other fold's models 1.08-1.15). So the rows of each step (``batch_size`` = rows of one optimizer step over
    all processes) stay length-grouped, and the full steps after the first (the longest row: an OOM shows at once)
    are shuffled; a last partial step stays last, so the DataLoader's batch boundaries stay the steps' boundaries.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        from transformers.trainer_pt_utils import LengthGroupedSampler

        self.generator = torch.Generator()
        self.seed = seed
        self.batch_size = batch_size
        self.inner = LengthGroupedSampler(batch_size, lengths=list(lengths), generator=self.generator)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + int(epoch))

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        order = list(self.inner)  # draws from self.generator first: the same (seed, epoch) gives the same order
        b = self.batch_size
        steps = [order[i:i + b] for i in range(0, len(order), b)]
        tail = [steps.pop()] if len(steps) > 1 and len(steps[-1]) < b else []
        if len(steps) > 2:
            rest = (torch.randperm(len(steps) - 1, generator=self.generator) + 1).tolist()
            steps = [steps[0]] + [steps[j] for j in rest]
        return iter([i for step in steps + tail for i in step])


class ClassifierTrainer(Trainer):
    """HF Trainer whose loss is ``loss_fn(logits[B,3], batch)``, normalised over the accumulated step."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_fn: LossFn, lengths: list[int] | None = None,
                 head_learning_rate: float | None = None, **kw):
        super().__init__(*args, **kw)
        self.loss_fn = loss_fn
        self.lengths = lengths
        self.head_learning_rate = head_learning_rate
        self.model_accepts_loss_kwargs = True  # makes Trainer count rows per accumulated step (num_items_in_batch)
        self._terms: dict[str, float] = {}
        self._term_rows = 0

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy == "group_by_length" and self.lengths is not None:
            seed = int(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
            # rows of one optimizer step over ALL processes: accelerate deals consecutive per-process batches of this
            # order to the ranks, so grouping by the global step gives each step the rows one process would train
            # on (per-process grouping: measured 5e-3 off one process's final student on 48 rows, 2 processes)
            rows = self.args.train_batch_size * self.args.gradient_accumulation_steps * max(self.args.world_size, 1)
            self._epoch_sampler = EpochLengthGroupedSampler(rows, self.lengths, seed)
            return self._epoch_sampler
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        """HF's optimizer, with the classification head's parameters moved into their own groups at
        ``head_learning_rate`` (same weight-decay split; the scheduler scales every group's peak alike)."""
        opt = super().create_optimizer(model)
        if self.head_learning_rate is None or getattr(self, "_head_groups_done", False):
            return opt
        head = classification_head(self.model if model is None else model)
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        moved = []
        for group in opt.param_groups:
            stay = [p for p in group["params"] if id(p) not in head_ids]
            if len(stay) < len(group["params"]):
                moved.append({**group, "params": [p for p in group["params"] if id(p) in head_ids],
                              "lr": self.head_learning_rate, "initial_lr": self.head_learning_rate})
                group["params"] = stay
        if not moved:
            raise RuntimeError("train.head_learning_rate: no trainable classification-head parameter in the optimizer")
        opt.param_groups[:] = [g for g in opt.param_groups if g["params"]] + moved
        self._head_groups_done = True
        return opt

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Rows in the accumulated step, every row counted: HF counts labels != -100, but a row without a hard label
        (label -100, a loss with ``takes_unlabelled_rows``) still carries its soft terms, and a micro-batch of such
        rows alone would divide by zero (NaN gradients)."""
        rows = [{**b, "labels": torch.zeros_like(b["labels"])} if "labels" in b else b for b in batch_samples]
        return super()._get_num_items_in_batch(rows, device)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """The resumed epoch's loader (first ``num_batches`` skipped), its sampler set to that epoch.

        Under a multi-process launch accelerate wraps the sampler as SkipBatchSampler(BatchSamplerShard(...)), and
        neither the Trainer's nor accelerate's ``set_epoch`` reaches through both: the resumed epoch would replay
        epoch 0's order (measured: an FSDP fold resumed mid-epoch 2 trained a different batch at its first step).
        """
        sampler = getattr(self, "_epoch_sampler", None)
        if sampler is not None:
            sampler.set_epoch(math.floor(float(self.state.epoch or 0) + 1e-9))
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _get_eval_sampler(self, eval_dataset):
        return torch.utils.data.SequentialSampler(eval_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        batch = {"labels": labels}
        if "teacher_logits" in inputs:
            batch["teacher_logits"] = inputs.pop("teacher_logits")
        with answer_spans(model, inputs.pop("answer_spans", None)):  # llm.answer_pooling (a no-op without it)
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


def gathered_trainable_state(trainer) -> dict | None:
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
