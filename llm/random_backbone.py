"""Seeded random backbones (``backbone: random`` + ``random_init``): built once from the config, saved under
``<workdir>/random_backbones/<model_type>-<hash>/`` and then loaded like any pretrained folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from arena_kd.common.config_model import ModelConfig
from arena_kd.common.errors import UserError
from arena_kd.llm.cache import publish_dir, temporary_sibling
from arena_kd.llm.head import NUM_LABELS


def random_backbone_dir(model_cfg: ModelConfig, vocab_size: int, pad_token_id: int | None, workdir: str | Path) -> Path:
    """Build (once) and save a seeded random backbone from ``random_init``; returns its folder.

    Saving it makes random backbones behave like any pretrained folder: quantization works through
    ``from_pretrained`` and a frozen base is identical when an adapter is loaded later.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    ri = dict(model_cfg.random_init or {})
    if "model_type" not in ri:
        raise UserError("model.random_init: needs 'model_type' (e.g. gemma2, llama, bert) when backbone is 'random'")
    seed = int(ri.pop("seed", 0))
    model_type = ri.pop("model_type")
    key = json.dumps({"model_type": model_type, "seed": seed, "vocab": vocab_size, "pad": pad_token_id, **ri},
                     sort_keys=True)
    d = Path(workdir) / "random_backbones" / f"{model_type}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (d / "config.json").is_file():
        return d
    try:
        config = AutoConfig.for_model(model_type, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                      num_labels=NUM_LABELS, **ri)
    except (ValueError, TypeError) as exc:
        raise UserError(f"model.random_init: {str(exc).splitlines()[0]}") from None
    if model_type.startswith("gemma"):
        config._attn_implementation = "eager"
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(d)
    model.save_pretrained(str(tmp))
    publish_dir(tmp, d)
    return d
