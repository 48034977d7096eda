"""Training losses and their identity: the default hard-label cross-entropy, and the key a loss contributes to a
run's resume hash (``loss_key``).

A loss is ``loss_fn(logits float[B,3], batch) -> (loss, {term: float})`` where ``batch["labels"]`` is long[B] and
``batch["teacher_logits"]`` float[B,3] or float[B,k,3] when the training frame has a ``teacher_logits`` column; the
loss is a mean over the B rows. A loss whose ``takes_unlabelled_rows`` attribute is true also takes rows without a
hard label (``labels`` = -100 there); the others are given labelled rows only (llm.train refuses a missing label).
The shipped losses name themselves (``name()``) and give their own resume identity (``resume_key()``), frozen at the
keys written before issue 15 moved them (tests/test_losses.py).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

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
