"""Logits for every row of a pair table: length-sorted, token-budgeted batches, A/B-swap TTA, data-parallel.

Data parallelism: when torch.distributed is initialised (``accelerate launch``, ``torchrun`` or a
gloo group), process r predicts rows r, r+W, r+2W, ... and the shards are gathered back into
input order on every process, so every process returns the full [n,3] array.

Sharded models (FSDP after training under an FSDP launch): every forward is a collective (each layer's weights
are all-gathered), so every rank must run the same number of forwards. Ranks whose shard makes fewer batches run
one-token dummy batches until all ranks have run as many as the busiest (``lockstep_world``); their outputs are
dropped. Without this a rank with one batch fewer would leave the others waiting in an all-gather forever.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from arena_kd.data.schema import swap_logits
from arena_kd.llm.batching import accepts_position_ids, collate, token_budget_batches
from arena_kd.llm.tokenizer import PADDING_SIDE


def process_group() -> tuple[int, int]:
    """(rank, world size) of the current data-parallel group; (0, 1) when not distributed."""
    import torch.distributed as dist

    from arena_kd.llm.placement import in_solo

    if in_solo():  # a block this process runs alone (llm.placement.solo): every row here, no gather
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate/torchrun: let accelerate set up the group
        from accelerate import PartialState

        st = PartialState(cpu=not torch.cuda.is_available())  # CPU: gloo (without cpu=True each process is alone)
        return st.process_index, st.num_processes
    return 0, 1


def model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def lockstep_world(model) -> int:
    """World size of the process group ``model`` is sharded over (FSDP1 or FSDP2); 1 for an unsharded model."""
    import torch.distributed as dist

    from arena_kd.llm.placement import sharded_model

    return dist.get_world_size() if sharded_model(model) else 1


def _pad_to_busiest_rank(batches: list) -> list:
    """``batches`` + None entries (dummy forwards) up to the largest batch count of any rank (a collective)."""
    import torch.distributed as dist

    count = torch.tensor([len(batches)], dtype=torch.long)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return list(batches) + [None] * (int(count.item()) - len(batches))


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
    spans: list | None = None,
) -> np.ndarray:
    """float32[len(sequences), num_labels] logits for already rendered ``sequences``, in their order.

    ``spans``: each sequence's field spans (``data.render.render_batch_spans``), needed by a model with answer pooling
    (``llm.answer_pooling``) and ignored by one without.
    A sharded model runs in lockstep with the other ranks (see the module doc), also with no sequences here.
    """
    n = len(sequences)
    lockstep = lockstep_world(model) > 1
    if lockstep:
        from arena_kd.llm.placement import in_solo

        if in_solo():  # its forwards would wait for ranks that are not predicting: fail now, not at the timeout
            raise RuntimeError("an FSDP-sharded model cannot predict on one process alone (llm.placement.solo); "
                               "reload its gathered adapter unsharded")
    if n == 0 and not lockstep:
        return np.zeros((0, 3), dtype=np.float32)
    lengths = [len(s) for s in sequences]
    batches = token_budget_batches(lengths, tokens_per_batch, max_batch_size) if n else []
    if lockstep:
        batches = _pad_to_busiest_rank(batches)
    # inference_mode tensors cannot enter FSDP's all-gathers; no_grad is enough there
    with torch.no_grad() if lockstep else torch.inference_mode():
        out = _run_batches(model, sequences, batches, pad_token_id, padding_side, progress, desc, spans)
    return out if out is not None else np.zeros((0, 3), dtype=np.float32)


def _run_batches(model, sequences, batches, pad_token_id, padding_side, progress, desc, spans) -> np.ndarray | None:
    from arena_kd.llm.answer_pooling import answer_spans, is_installed, padded_spans

    pools = is_installed(model)
    if pools and spans is None:
        raise ValueError("this model pools the answers (model.answer_pooling): logits_for_ids needs their spans")
    n = len(sequences)
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
            if idx is None:  # dummy forward: keeps a sharded model's collectives in step with busier ranks
                dummy = collate([[pad_token_id]], pad_token_id, padding_side, with_position_ids=use_pos)
                with answer_spans(model, torch.zeros((1, 2, 2), dtype=torch.long)):  # empty answers
                    model(**{k: v.to(device) for k, v in dummy.items()})
                continue
            batch = collate([sequences[i] for i in idx], pad_token_id, padding_side, with_position_ids=use_pos)
            batch = {k: v.to(device) for k, v in batch.items()}
            where = None
            if pools:
                where = padded_spans([spans[i] for i in idx], [len(sequences[i]) for i in idx],
                                     batch["input_ids"].shape[1], padding_side)
            with answer_spans(model, where):
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
    Rows are rendered with ``data.render.render_batch_spans``, sorted by length and batched under
    ``tokens_per_batch`` padded tokens (at most ``max_batch_size`` rows), then restored to input order.
    """
    from arena_kd.data.render import render_batch_spans

    n = len(df)
    rank, world = process_group()
    shard = np.arange(rank, n, world, dtype=np.int64) if world > 1 else np.arange(n, dtype=np.int64)
    part = df.iloc[shard] if world > 1 else df
    seqs, spans = [], []
    if len(part):
        seqs, spans = render_batch_spans(part, tokenizer, max_length, truncation, prompt_fraction, swap=swap,
                                         template=template)
    local = logits_for_ids(
        model, seqs, tokenizer.pad_token_id,
        tokens_per_batch=tokens_per_batch, max_batch_size=max_batch_size,
        padding_side=PADDING_SIDE,  # the engine's side, as in training (encoders pool the first token: never left)
        progress=progress and rank == 0, desc="predict (swapped)" if swap else "predict", spans=spans,
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
    ``predict_tta(swap_frame(df))["avg"]`` equals ``avg[:, SWAP_PERMUTATION]``.
    """
    kwargs.pop("swap", None)
    orig = predict_logits(model, tokenizer, df, swap=False, **kwargs)
    swapped = predict_logits(model, tokenizer, df, swap=True, **kwargs)
    swap_back = swap_logits(swapped)
    return {"orig": orig, "swap": swap_back, "avg": tta_average(orig, swap_back)}
