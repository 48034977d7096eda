"""The 3-class classification head: its size and class names, which module it is (decoders: ``score``, encoders:
``classifier``), and its seeded re-initialisation for training."""

from __future__ import annotations

import torch

from arena_kd.common.errors import UserError
from arena_kd.common.keys import LABELS

NUM_LABELS = 3
ID2LABEL = {i: c.removeprefix("winner_") for i, c in enumerate(LABELS)}  # model_a, model_b, tie
HEAD_NAMES = ("score", "classifier")  # decoder heads are `score`, encoder heads `classifier`


def classification_head(model) -> torch.nn.Module | None:
    """The final classification Linear (``score`` or ``classifier[.out_proj]``) of an HF model (peft-wrapped or
    not)."""
    base = model
    for name in HEAD_NAMES:
        mod = getattr(base, name, None)
        if mod is None:
            continue
        if isinstance(mod, torch.nn.Linear):
            return mod
        if isinstance(getattr(mod, "out_proj", None), torch.nn.Linear):  # RoBERTa/DeBERTa-style heads
            return mod.out_proj
        linears = [m for m in mod.modules() if isinstance(m, torch.nn.Linear)]
        if linears:
            return linears[-1]
    return None


def reinit_head(model, std: float, seed: int | None = None) -> None:
    """Re-initialise the classification head: weight ~ N(0, std) (std 0: all zeros), bias 0."""
    head = classification_head(model)
    if head is None:
        raise UserError(f"{type(model).__name__}: no classification head ('score' or 'classifier') to initialise")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0 if seed is None else int(seed))
    with torch.no_grad():
        w = torch.randn(head.weight.shape, generator=gen, dtype=torch.float32) * std
        head.weight.copy_(w.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.zero_()
