"""Frozen cross-encoder features for the linear probe (benchmarks/linear_probe.py ``--input cross-*``): what the demo
student's own input representation holds before any fine-tuning.

The separate-text probe embeds the prompt and each answer on its own. The student instead reads one rendered pair
(``data.render.render_batch_spans``: ``<prompt>: … <response_a>: … <response_b>: …`` under one token budget) and its
head reads one pooled vector. Each row is rendered in both orientations, run through the frozen backbone once per
orientation (the student's ``llm.loading.load_classifier``, layers pruned like the pipeline's), and pooled three ways:

  head     the token the classification head reads (``llm.backbone_config.pooling``: the first token of an encoder,
           through BERT's pooler; the last real token of a decoder)
  mean     the mean over all real tokens
  segment  the mean over each field's own tokens (``render_batch_spans``): one vector per response, read in context

As (a, b, p) for ``linear_probe.PairProbe`` (unit vectors, so its features and swap symmetry apply unchanged):
head / mean: a = pool(row), b = pool(swapped row), p = 0 (an A/B swap exchanges a and b exactly); segment: a = the
first-orientation A vector averaged with the swapped orientation's A vector (B likewise, the prompt over both), so a
swap exchanges a and b exactly here too. Cached as one .npz per (model, layers, max length, rendered rows).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

POOLS = ("head", "mean", "segment")
BATCH_TOKENS = 8192


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pool_hidden(hidden, mask, spans, head_token: str = "first_token") -> dict[str, np.ndarray]:
    """Pooled vectors of one padded batch: hidden float[B, T, D], mask long[B, T] (1 = real token, left or right
    padding), spans int[B, 3, 2] field ranges in each row's unpadded ids, head_token "first_token" | "last_non_pad"
    (what the classifier's head reads). → head / mean float32[B, D], and segment
    float32[B, 3, D] (prompt, first response, second response; an empty field gives zeros)."""
    import torch

    from arena_kd.llm.answer_pooling import span_means  # the masked mean answer pooling itself uses

    h = hidden.float()
    m = mask.to(h.dtype)
    start = mask.argmax(1)  # first real token under either padding side
    rows = torch.arange(h.shape[0])
    last = h.shape[1] - 1 - mask.flip(1).argmax(1)  # last real token under either padding side
    head = h[rows, start if head_token == "first_token" else last]
    mean = (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
    seg = span_means(h, torch.as_tensor(np.asarray(spans), dtype=torch.long) + start[:, None, None])
    return {"head": head.numpy().astype(np.float32), "mean": mean.numpy().astype(np.float32),
            "segment": seg.numpy().astype(np.float32)}


def run_backbone(base, ids: list[list[int]], spans: list, pad_token_id: int, padding_side: str,
                 head_token: str = "first_token") -> dict[str, np.ndarray]:
    """:func:`pool_hidden` over all rows: length-sorted batches of at most ``BATCH_TOKENS`` padded tokens, no grad."""
    import torch

    from arena_kd.llm.batching import collate, token_budget_batches

    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for idx in token_budget_batches([len(x) for x in ids], BATCH_TOKENS, 64):
            b = collate([ids[i] for i in idx], pad_token_id, padding_side, with_position_ids=False)
            hidden = base(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            pooled = pool_hidden(hidden, b["attention_mask"], [spans[i] for i in idx], head_token)
            for k, v in pooled.items():
                out.setdefault(k, np.zeros((len(ids), *v.shape[1:]), np.float32))[idx] = v
    return out


def pair_inputs(straight: dict[str, np.ndarray], swapped: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per pool, the probe's unit (a, b, p) from the pooled vectors of the rows and of their swapped renderings (module
    doc): an A/B swap of a row exchanges its a and b."""
    out = {}
    for pool in ("head", "mean"):
        a, b = _unit(straight[pool]), _unit(swapped[pool])
        out[pool] = {"a": a, "b": b, "p": np.zeros_like(a)}
    s, w = straight["segment"], swapped["segment"]  # [n, 3, D]: prompt, first, second (swapped: first is B)
    out["segment"] = {"a": _unit(_unit(s[:, 1]) + _unit(w[:, 2])), "b": _unit(_unit(s[:, 2]) + _unit(w[:, 1])),
                      "p": _unit(_unit(s[:, 0]) + _unit(w[:, 0]))}
    return out


def cross_inputs(frames: dict, model_cfg, max_length: int, cache: Path,
                 workdir: str | Path = "runs/linear_probe") -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{frame name: {pool: {a, b, p}}} for each frame of ``frames`` (name → canonical pair table): ``model_cfg``'s
    backbone (a ``ModelConfig``: layers pruned as the pipeline prunes them) over the demo's render settings at
    ``max_length``. Each frame's vectors are computed once, then read from ``cache``."""
    from arena_kd.common.config_model import RenderConfig
    from arena_kd.data.render import render_batch_spans
    from arena_kd.llm.loading import load_classifier

    rc = RenderConfig(max_length=max_length)
    clf, tok, info = load_classifier(model_cfg, training=False, workdir=workdir)
    base = clf.base_model  # the encoder / decoder body without its classification head
    result = {}
    for name, frame in frames.items():
        rendered = [render_batch_spans(frame, tok, max_length, rc.truncation, rc.prompt_fraction, swap=sw,
                                       template=rc.template) for sw in (False, True)]
        key = hashlib.sha1(repr((model_cfg.model_dump_json(), max_length, rendered)).encode()).hexdigest()[:16]
        path = Path(cache) / f"cross-{key}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                pooled = [{k: z[f"{i}_{k}"] for k in POOLS} for i in range(2)]
        else:
            pooled = [run_backbone(base, ids, spans, tok.pad_token_id, tok.padding_side, info["pooling"])
                      for ids, spans in rendered]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **{f"{i}_{k}": v for i, p in enumerate(pooled) for k, v in p.items()})
            os.replace(tmp, path)  # atomic: an interrupted run leaves no half-written cache
        result[name] = pair_inputs(*pooled)
    return result
