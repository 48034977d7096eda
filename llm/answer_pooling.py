"""Answer pooling (``model.answer_pooling``): the classification head reads, besides the one token it always reads,
the difference of the two answers' mean final hidden states, ``mean(h[A tokens]) − mean(h[B tokens])``.

Why (benchmarks/linear_probe.py ``--input cross``, README "Where is the row signal lost?"): on the demo student's own
rendered input, frozen, a linear probe on the token the head reads ranks no rows, while the same forward pass pooled
over each answer's own tokens ranks the rows of both sources. The difference flips sign under an A/B swap, so it is
what tells the answers apart; the head's token still carries what is symmetric (how alike they are: ties).

How: one forward hook on the model's body (``base_model_prefix``: ``bert``, ``model``), no new weights. It takes the
body's last hidden state [B, T, H] and the answers' spans [B, 2, 2] (token ranges of A and B in the padded batch, from
``data.render.render_batch_spans``), computes the difference d [B, H] and adds it to what the head reads: the pooled
output [B, H] of an encoder with a pooler (BERT), else every position of the last hidden state (a decoder's head reads
one of them; RoBERTa-style heads read the first). So the head computes W·(h_token + d) + b: LoRA, peft's head wrapper,
FSDP sharding, merging and export see the same parameters as without it. The flag is saved in ``config.json``
(``answer_pooling: true``), so a saved, merged or exported model pools the same way on load.

Every forward of such a model must name its batch's spans (:func:`answer_spans`); one that does not raises instead of
predicting without them. Training (``llm.trainer``) and prediction (``llm.predict``) pass them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch

from arena_kd.common.errors import UserError
from arena_kd.llm.head import HEAD_NAMES

CONFIG_FLAG = "answer_pooling"


class _State:
    """The answers' spans of the batch being run (set per forward by :func:`answer_spans`)."""

    def __init__(self):
        self.spans: torch.Tensor | None = None


def hf_model(model):
    """The transformers model under the wrappers training puts around it: DistributedDataParallel / DataParallel /
    FSDP1 (``.module``; FSDP2 shards in place) and peft (``get_base_model``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel,
                             FullyShardedDataParallel)):
        model = model.module
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def is_installed(model) -> bool:
    return getattr(hf_model(model), "_answer_pooling", None) is not None


def wants_answer_pooling(model) -> bool:
    """True when the model was saved with answer pooling (its config's flag)."""
    return bool(getattr(hf_model(model).config, CONFIG_FLAG, False))


def span_means(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """float32[B, K, H]: mean of ``hidden`` [B, T, H] over each of a row's K half-open position ranges, ``spans``
    long[B, K, 2] in the padded batch; an empty range averages to 0."""
    h = hidden.float()
    pos = torch.arange(h.shape[1], device=h.device)[None, :]
    spans = spans.to(h.device)
    means = []
    for k in range(spans.shape[1]):
        inside = ((pos >= spans[:, k, :1]) & (pos < spans[:, k, 1:])).to(h.dtype)  # [B, T]
        means.append((h * inside.unsqueeze(-1)).sum(1) / inside.sum(1, keepdim=True).clamp(min=1.0))
    return torch.stack(means, 1)


def answer_difference(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """float32[B, H]: mean of ``hidden`` [B, T, H] over each row's A range minus its mean over the B range; ``spans``
    long[B, 2, 2] = ((a0, a1), (b0, b1)) half-open positions in the padded batch; an empty range averages to 0."""
    means = span_means(hidden, spans)
    return means[:, 0] - means[:, 1]


def install(model) -> None:
    """Add answer pooling to ``model`` (idempotent): the body hook of the module doc, and the config flag."""
    hf = hf_model(model)
    if getattr(hf, "_answer_pooling", None) is not None:
        return
    body = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    if not isinstance(body, torch.nn.Module) or not any(isinstance(getattr(hf, n, None), torch.nn.Module)
                                                        for n in HEAD_NAMES):
        raise UserError(f"model.answer_pooling: {type(hf).__name__} has no body ('{hf.base_model_prefix}') or no "
                        "classification head ('score' / 'classifier') to pool the answers for")
    state = _State()

    def add_difference(module, args, output):
        if state.spans is None:
            raise RuntimeError(f"{type(hf).__name__} pools the answers (model.answer_pooling): run it inside "
                               "llm.answer_pooling.answer_spans(model, spans)")
        hidden = output[0]  # last_hidden_state (ModelOutput or tuple)
        d = answer_difference(hidden, state.spans)
        pooled = getattr(output, "pooler_output", None) if not isinstance(output, tuple) else (
            output[1] if len(output) > 1 and torch.is_tensor(output[1]) and output[1].dim() == 2 else None)
        if pooled is not None:
            key, value = 1, pooled + d.to(pooled.dtype)
        else:
            key, value = 0, hidden + d.to(hidden.dtype)[:, None, :]
        if isinstance(output, tuple):
            return output[:key] + (value,) + output[key + 1:]
        setattr(output, "pooler_output" if key else "last_hidden_state", value)  # ModelOutput keeps attr and item
        return output

    body.register_forward_hook(add_difference)
    hf._answer_pooling = state  # a plain attribute: no parameter, nothing in the state dict
    setattr(hf.config, CONFIG_FLAG, True)


def padded_spans(spans: Sequence, lengths: Sequence[int], width: int, padding_side: str) -> torch.Tensor:
    """long[B, 2, 2]: each row's (A, B) token ranges (``render_batch_spans``' second and third ranges, in the row's own
    ids) moved to the padded batch of ``width`` columns."""
    out = torch.zeros((len(spans), 2, 2), dtype=torch.long)
    for i, (row, n) in enumerate(zip(spans, lengths)):
        shift = width - n if padding_side == "left" else 0
        for k, (lo, hi) in enumerate(row[-2:]):
            out[i, k, 0], out[i, k, 1] = lo + shift, hi + shift
    return out


@contextmanager
def answer_spans(model, spans: torch.Tensor | None):
    """Run ``model`` on a batch whose answers lie at ``spans`` (long[B, 2, 2]); a model without answer pooling
    ignores them. The state is cleared afterwards, also when the forward raises."""
    state = getattr(hf_model(model), "_answer_pooling", None)
    if state is None:
        yield
        return
    state.spans = spans
    try:
        yield
    finally:
        state.spans = None
