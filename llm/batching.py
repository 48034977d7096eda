"""Token-budgeted batching and dynamic padding shared by training and prediction."""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch


def token_budget_batches(lengths: Sequence[int], tokens_per_batch: int, max_batch_size: int) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches, longest rows first.

    Rows are sorted by length (descending, stable); a batch grows while ``rows * longest <= tokens_per_batch``
    and ``rows <= max_batch_size`` (a single row longer than the budget gets a batch of its own). The
    first batch is the largest in padded tokens, so an out-of-memory shows up at once.
    Returns a list of int64 index arrays covering every row exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if tokens_per_batch < 1 or max_batch_size < 1:
        raise ValueError("tokens_per_batch and max_batch_size must be >= 1")
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_batch_size, tokens_per_batch // longest, n - start))
        batches.append(order[start : start + size])
        start += size
    return batches


def padding_efficiency(lengths: Sequence[int], batches: list[np.ndarray]) -> float:
    """Real tokens / processed (padded) tokens of ``batches``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    real = int(lengths.sum())
    processed = sum(int(lengths[b].max()) * len(b) for b in batches if len(b))
    return real / processed if processed else 1.0


def accepts_position_ids(model) -> bool:
    """Whether the (possibly peft-wrapped) model's forward takes ``position_ids``."""
    m = model
    for attr in ("get_base_model",):
        if hasattr(m, attr):
            m = m.get_base_model()
    try:
        return "position_ids" in inspect.signature(m.forward).parameters
    except (TypeError, ValueError):
        return False


def collate(
    sequences: Sequence[Sequence[int]],
    pad_token_id: int,
    padding_side: str = "right",
    with_position_ids: bool = True,
) -> dict[str, torch.Tensor]:
    """Pad ``sequences`` to the longest one.

    Returns input_ids long[B,T], attention_mask long[B,T] and (when asked) position_ids long[B,T]
    counting real tokens from 0 (padding positions get 0), so left and right padding feed a row
    the same positions.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    b = len(sequences)
    t = max((len(s) for s in sequences), default=0)
    ids = torch.full((b, t), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((b, t), dtype=torch.long)
    for i, s in enumerate(sequences):
        n = len(s)
        if n == 0:
            continue
        row = torch.as_tensor(list(s), dtype=torch.long)
        if padding_side == "right":
            ids[i, :n] = row
            mask[i, :n] = 1
        else:
            ids[i, t - n :] = row
            mask[i, t - n :] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if with_position_ids:
        out["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0) * mask
    return out
