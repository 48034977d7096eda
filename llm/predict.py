"""Logits for every row of a pair table: length-sorted, token-budgeted batches, A/B-swap TTA, data-parallel.

Data parallelism: when torch.distributed is initialised (``accelerate launch``, ``torchrun`` or a
gloo group), process r predicts rows r, r+W, r+2W, ... and the shards are gathered back into
input order on every process, so every process returns the full [n,3] array.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from llm.batching import accepts_position_ids, collate, token_budget_batches
from llm.loading import PADDING_SIDE

SWAP_COLUMNS = [1, 0, 2]


def process_group() -> tuple[int, int]:
    """(rank, world size) of the current data-parallel group; (0, 1) when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate/torchrun: let accelerate set up the group
        from accelerate import PartialState

        st = PartialState()
        return st.process_index, st.num_processes
    return 0, 1


def model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.inference_mode()
def logits_for_ids(
    model,
    sequences: list[list[int]],
    pad_token_id: int,
    *,
    tokens_per_batch: int = 8192,
    max_batch_size: int = 64,
    padding_side: str = "right",
    progress: bool = False,
    desc: str = "predict",
) -> np.ndarray:
    """float32[len(sequences), num_labels] logits for already rendered ``sequences``, in their order."""
    n = len(sequences)
    if n == 0:
        return np.zeros((0, 3), dtype=np.float32)
    lengths = [len(s) for s in sequences]
    batches = token_budget_batches(lengths, tokens_per_batch, max_batch_size)
    device = model_device(model)
    use_pos = accepts_position_ids(model)
    out: np.ndarray | None = None
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=desc, unit="batch", leave=False)
    was_training = model.training
    model.eval()
    try:
        for idx in it:
            batch = collate([sequences[i] for i in idx], pad_token_id, padding_side, with_position_ids=use_pos)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits.float().cpu().numpy()
            if out is None:
                out = np.empty((n, logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    finally:
        if was_training:
            model.train()
    return out


def _gather_rows(local: np.ndarray, shard: np.ndarray, n: int, world: int) -> np.ndarray:
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, (shard, local))
    width = next((p[1].shape[1] for p in parts if len(p[0])), 3)
    out = np.empty((n, width), dtype=np.float32)
    for idx, vals in parts:
        if len(idx):
            out[idx] = vals
    return out


def predict_logits(
    model,
    tokenizer,
    df: pd.DataFrame,
    *,
    max_length: int,
    truncation: str = "budget",
    prompt_fraction: float = 0.2,
    tokens_per_batch: int = 8192,
    max_batch_size: int = 64,
    swap: bool = False,
    progress: bool = True,
    template: str = "blocks",
) -> np.ndarray:
    """float32[n,3] logits of every row of the canonical table ``df``, in input order.

    ``swap=True`` renders B as A and A as B (the logits stay in the swapped orientation).
    Rows are rendered with ``data.render.render_batch``, sorted by length and batched under
    ``tokens_per_batch`` padded tokens (at most ``max_batch_size`` rows), then restored to input order.
    """
    from data.render import render_batch

    n = len(df)
    rank, world = process_group()
    shard = np.arange(rank, n, world, dtype=np.int64) if world > 1 else np.arange(n, dtype=np.int64)
    part = df.iloc[shard] if world > 1 else df
    seqs = render_batch(part, tokenizer, max_length, truncation, prompt_fraction, swap=swap, template=template) if len(part) else []
    local = logits_for_ids(
        model, seqs, tokenizer.pad_token_id,
        tokens_per_batch=tokens_per_batch, max_batch_size=max_batch_size,
        padding_side=PADDING_SIDE,  # the engine's side, as in training (encoders pool the first token: never left)
        progress=progress and rank == 0, desc="predict (swapped)" if swap else "predict",
    )
    if world > 1:
        return _gather_rows(local, shard, n, world)
    return local


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (input [n,k])."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def tta_average(orig: np.ndarray, swap_back: np.ndarray) -> np.ndarray:
    """float32[n,3]: mean of the log-softmax of the original and swapped-back logits (symmetric in its inputs)."""
    return ((log_softmax(orig) + log_softmax(swap_back)) / 2).astype(np.float32)


def predict_tta(model, tokenizer, df: pd.DataFrame, **kwargs) -> dict[str, np.ndarray]:
    """A/B-swap test-time augmentation; keyword arguments as :func:`predict_logits` (without ``swap``).

    Returns float32[n,3] arrays: "orig"; "swap" = the swapped pair's logits with the A/B columns
    swapped back to the original order; "avg" = mean log-softmax of the two. Exactly symmetric:
    ``predict_tta(swap_frame(df))["avg"]`` equals ``avg[:, [1,0,2]]``.
    """
    kwargs.pop("swap", None)
    orig = predict_logits(model, tokenizer, df, swap=False, **kwargs)
    swapped = predict_logits(model, tokenizer, df, swap=True, **kwargs)
    swap_back = np.ascontiguousarray(swapped[:, SWAP_COLUMNS])
    return {"orig": orig, "swap": swap_back, "avg": tta_average(orig, swap_back)}
