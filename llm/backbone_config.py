"""The backbone's HF config shaped into a 3-class classifier's: class names, pad token, no KV cache, the attention
implementation (Gemma2 rules), the softcapping switch and layer pruning (``model.num_layers``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from arena_kd.common.config_model import ModelConfig
from arena_kd.common.errors import UserError
from arena_kd.llm.head import ID2LABEL, NUM_LABELS

ENCODER_TYPES = {"bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "xlm-roberta", "modernbert",
                 "mpnet"}


class ClassifierConfig(NamedTuple):
    config: Any  # the shaped transformers PretrainedConfig
    model_type: str
    attn_implementation: str | None  # passed to from_pretrained (None: HF's default)
    softcapping_original: float | None  # attn_logit_softcapping before disable_softcapping


def resolve_attention(model_type: str, requested: str, disable_softcapping: bool, device: torch.device) -> str | None:
    """Attention implementation passed to HF (None = HF's default, sdpa where supported).

    Gemma2: transformers 5 declares ``_supports_sdpa = False`` for Gemma2 (sdpa has no logit
    softcapping), so sdpa is refused even with softcapping disabled; eager is the default; flash
    attention 2 (which implements softcapping) only on CUDA.
    """
    if model_type in ("gemma2", "gemma3", "gemma3_text"):
        if requested == "auto":
            return "eager"
        if requested == "sdpa":
            hint = (" (disable_softcapping does not change this: transformers has no sdpa path for Gemma2)"
                    if disable_softcapping else "")
            raise UserError(f"model.attn_implementation=sdpa: {model_type} needs eager (or flash_attention_2 on GPU) "
                            f"because of attention softcapping{hint}")
    if requested == "flash_attention_2" and device.type != "cuda":
        raise UserError("model.attn_implementation=flash_attention_2 needs a CUDA GPU; use eager or auto")
    return None if requested == "auto" else requested


def prune_layers(config, num_layers: int | None) -> None:
    """Keep the first ``num_layers`` transformer layers (layer pruning): the rest are never loaded."""
    if num_layers is None:
        return
    total = getattr(config, "num_hidden_layers", None)
    if total is None:
        raise UserError(f"model.num_layers={num_layers}: the backbone config has no num_hidden_layers")
    if num_layers > total:
        raise UserError(f"model.num_layers={num_layers}: the backbone has only {total} layers")
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention (Gemma2, Llama in transformers 5)
        config.layer_types = config.layer_types[:num_layers]


def classifier_config(source: str, load_kwargs: dict[str, Any], model_cfg: ModelConfig, pad_token_id: int | None,
                      device: torch.device) -> ClassifierConfig:
    """The config of ``source`` as a 3-class classifier's, shaped by ``model_cfg`` (see the module doc)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, **load_kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.backbone: cannot load '{source}': {str(exc).splitlines()[0]}") from None
    model_type = str(getattr(config, "model_type", "") or "")
    attn = resolve_attention(model_type, model_cfg.attn_implementation, model_cfg.disable_softcapping, device)
    config.num_labels = NUM_LABELS
    config.id2label = dict(ID2LABEL)
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.pad_token_id = pad_token_id
    softcap_before = getattr(config, "attn_logit_softcapping", None)
    if model_cfg.disable_softcapping:
        if not hasattr(config, "attn_logit_softcapping"):
            raise UserError(f"model.disable_softcapping: {model_type} has no attention softcapping")
        config.attn_logit_softcapping = None
    if hasattr(config, "use_cache"):
        config.use_cache = False
    prune_layers(config, model_cfg.num_layers)
    return ClassifierConfig(config, model_type, attn, softcap_before)


def pooling(model_config, model_type: str) -> str:
    """Which token the head reads: the last non-pad one (decoders), or the first one (encoders)."""
    if getattr(model_config, "is_decoder", False) or model_type not in ENCODER_TYPES:
        return "last_non_pad"
    return "first_token"
