"""Load any HF backbone (decoder or encoder) as a 3-class preference classifier.

``load_classifier`` builds ``AutoModelForSequenceClassification`` with ``num_labels=3`` and applies, in order:
dtype and quantization rules (``llm.devices``), the tokenizer (``llm.tokenizer``), the weights' source (a folder or
hub id, a seeded random backbone ``llm.random_backbone``, a dequantised GGUF copy ``llm.gguf``), Gemma2 attention and
softcapping rules and layer pruning (``llm.backbone_config``), pad token, head re-initialisation (``llm.head``),
k-bit preparation and LoRA (training), or an adapter (inference). The returned ``info`` dict records every choice
needed to reload the model identically (see :func:`classifier_info`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from arena_kd.common.config_model import ModelConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import resolve_path
from arena_kd.llm import lora as lora_mod
from arena_kd.llm.answer_pooling import install as install_answer_pooling
from arena_kd.llm.answer_pooling import wants_answer_pooling
from arena_kd.llm.backbone_config import ClassifierConfig, classifier_config, pooling
from arena_kd.llm.devices import (
    DTYPE_NAMES,
    keep_bnb_4bit_layout_on_cpu,
    quantization_config,
    resolve_device,
    resolve_dtype,
)
from arena_kd.llm.gguf import dequantized_gguf, gguf_folder
from arena_kd.llm.head import reinit_head
from arena_kd.llm.placement import main_process_first, placement_kwargs, sharded_storage_dtype, sharding_launch
from arena_kd.llm.random_backbone import random_backbone_dir
from arena_kd.llm.tokenizer import PADDING_SIDE, load_saved_tokenizer, load_tokenizer

log = logging.getLogger(__name__)


def _backbone_source(model_cfg: ModelConfig, tokenizer, workdir) -> str:
    if model_cfg.backbone == "random":
        return str(random_backbone_dir(model_cfg, len(tokenizer), tokenizer.pad_token_id, workdir))
    return resolve_path(model_cfg.backbone)


def adapter_kind(adapter: str | Path) -> str:
    """'lora' (a peft adapter folder) or 'full' (a whole model folder saved by full fine-tuning)."""
    p = Path(adapter)
    if (p / "adapter_config.json").is_file():
        return "lora"
    if (p / "config.json").is_file():
        return "full"
    raise UserError(f"{p}: not an adapter folder (no adapter_config.json) nor a model folder (no config.json)")


def load_classifier(
    model_cfg: ModelConfig,
    *,
    training: bool,
    workdir: str | Path,
    adapter: str | Path | None = None,
    device: str | torch.device | None = None,
    tokenizer=None,
    train_texts: list[str] | None = None,
    seed: int | None = None,
):
    """(model, tokenizer, info) for ``model_cfg``.

    training=True: k-bit preparation (quantized bases), fresh head (``head_init_std``, seeded by
    ``seed``), LoRA adapters (or full fine-tuning when ``lora.enabled`` is false).
    training=False: eval mode; ``adapter`` (a LoRA adapter folder, or a full model folder saved by
    full fine-tuning) is loaded onto the (possibly quantized) base.
    """
    from transformers import AutoModelForSequenceClassification

    dev = resolve_device(device)
    dtype = resolve_dtype(model_cfg.dtype, dev, training)
    if model_cfg.quantization != "none" and dtype == torch.float16 and dev.type == "cpu":
        raise UserError(f"model.quantization={model_cfg.quantization} with dtype=fp16 is not supported on CPU; "
                        "use fp32 or bf16")
    kind = adapter_kind(adapter) if adapter is not None else None

    with main_process_first():  # caches (bpe tokenizer, random backbone, GGUF copy) are built once, by the main process
        if tokenizer is None:
            bpe = (model_cfg.tokenizer or "").startswith("bpe:")
            if adapter is not None and (Path(adapter) / "tokenizer.json").is_file() and bpe:
                tokenizer = load_saved_tokenizer(adapter)
            else:
                tokenizer = load_tokenizer(model_cfg, workdir, train_texts)
        tokenizer.padding_side = PADDING_SIDE

        source = str(adapter) if kind == "full" else _backbone_source(model_cfg, tokenizer, workdir)
        is_local = Path(source).exists()
        common: dict[str, Any] = {}
        if model_cfg.gguf_file and kind != "full":
            # dequantise once into a plain HF folder: later loads take seconds, and HF Trainer refuses GGUF models
            folder = gguf_folder(model_cfg.backbone, model_cfg.gguf_file, workdir)  # assembled from chunks if needed
            source = str(dequantized_gguf(folder, model_cfg.gguf_file, workdir))
            is_local = True
    if model_cfg.revision and not is_local:
        common["revision"] = model_cfg.revision
    shaped = classifier_config(source, common, model_cfg, tokenizer.pad_token_id, dev)

    # FSDP: the Trainer shards what is loaded here (ZeRO-3 is refused earlier)
    sharded = sharding_launch() if training else None
    load_dtype = sharded_storage_dtype(dtype) if sharded else dtype
    qconf = quantization_config(model_cfg.quantization, dtype, storage_dtype=load_dtype)
    kwargs: dict[str, Any] = dict(config=shaped.config, dtype=load_dtype, **common)
    if shaped.attn_implementation is not None:
        kwargs["attn_implementation"] = shaped.attn_implementation
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    kwargs.update(placement_kwargs(model_cfg.device_map, model_cfg.max_memory, dev, qconf is not None))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(f"model.backbone: cannot load '{source}' as a classifier ({model_cfg.quantization}, "
                        f"{DTYPE_NAMES.get(dtype)}): {str(exc).splitlines()[0]}") from None
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    if "device_map" not in kwargs:
        model.to(dev)
    elif dev.type == "cpu" and qconf is not None:
        keep_bnb_4bit_layout_on_cpu(model)
    model.config.pad_token_id = tokenizer.pad_token_id

    if training:
        model = _prepare_for_training(model, model_cfg, adapter, kind, seed, dtype, quantized=qconf is not None,
                                      sharded=sharded)
    else:
        model = _prepare_for_inference(model, adapter, kind)
    if model_cfg.answer_pooling or wants_answer_pooling(model):  # a saved full model carries the flag itself
        install_answer_pooling(model)
    info = classifier_info(model_cfg, model, tokenizer, shaped, source=source, dtype=dtype, dev=dev,
                           sharded=sharded, adapter=adapter)
    if training:
        trainable, total = info["trainable_params"], info["total_params"]
        log.info("trainable parameters: %d / %d (%.4f%%)", trainable, total, 100 * trainable / max(total, 1))
        print(f"[llm] trainable parameters: {trainable:,} / {total:,} ({100 * trainable / max(total, 1):.3f}%)")
    return model, tokenizer, info


def _prepare_for_training(model, model_cfg: ModelConfig, adapter, kind: str | None, seed: int | None,
                          dtype: torch.dtype, *, quantized: bool, sharded: str | None):
    """Fresh head, k-bit preparation, LoRA (new or resumed from ``adapter``), fp32 trained weights under fp16."""
    if adapter is None:
        reinit_head(model, model_cfg.head_init_std, seed)
    if quantized and not sharded:  # sharded QLoRA: no fp32 upcast (FSDP needs one dtype), see llm.placement
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=model_cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if model_cfg.lora.enabled:
        if kind == "lora":
            model = lora_mod.load_adapter(model, adapter, trainable=True)
        else:
            model = lora_mod.apply_lora(model, model_cfg.lora, autocast_adapter_dtype=not sharded)
    if model_cfg.freeze_embeddings and not model_cfg.lora.enabled:
        model.get_input_embeddings().weight.requires_grad_(False)  # the token table: most of a small LLM's weights
    if dtype == torch.float16 and not sharded:  # GradScaler needs fp32 master copies of the trained weights
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    model.train()
    return model


def _prepare_for_inference(model, adapter, kind: str | None):
    """The LoRA ``adapter`` (if any) on top, eval mode, every parameter frozen."""
    if kind == "lora":
        model = lora_mod.load_adapter(model, adapter, trainable=False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def classifier_info(model_cfg: ModelConfig, model, tokenizer, shaped: ClassifierConfig, *, source: str,
                    dtype: torch.dtype, dev: torch.device, sharded: str | None, adapter) -> dict[str, Any]:
    """Every choice needed to reload the classifier identically (``llm.lora.save_adapter`` saves it as
    ``llm_info.json``).

    Keys: backbone, source, revision, gguf_file, tokenizer, model_type, dtype, quantization, attn_implementation,
    disable_softcapping, attn_logit_softcapping(_original), padding_side, pad_token_id, pooling, device, placement,
    lora, adapter, trainable_params, total_params, trainable_fraction, head_init_std.
    """
    trainable, total = lora_mod.count_parameters(model)
    return {
        "backbone": model_cfg.backbone,
        "source": source,
        "revision": model_cfg.revision,
        "gguf_file": model_cfg.gguf_file,
        "tokenizer": model_cfg.tokenizer,
        "model_type": shaped.model_type,
        "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
        "quantization": model_cfg.quantization,
        "attn_implementation": getattr(model.config, "_attn_implementation", None) or shaped.attn_implementation,
        "disable_softcapping": bool(model_cfg.disable_softcapping),
        "attn_logit_softcapping": getattr(model.config, "attn_logit_softcapping", None),
        "attn_logit_softcapping_original": shaped.softcapping_original,
        "padding_side": PADDING_SIDE,
        "pad_token_id": tokenizer.pad_token_id,
        "pooling": pooling(model.config, shaped.model_type),
        "device": str(dev),
        "placement": describe_placement(model, dev, sharded),
        "lora": model_cfg.lora.model_dump(mode="json") if model_cfg.lora.enabled else None,
        "adapter": str(adapter) if adapter is not None else None,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / max(total, 1),
        "head_init_std": model_cfg.head_init_std,
    }


def describe_placement(model, dev: torch.device, sharded: str | None) -> str:
    """'single', 'fsdp' / 'zero3' (sharded by the launch), or 'auto: cuda:0=20, cuda:1=21' (modules per device)."""
    if sharded:
        return sharded
    hf_map = getattr(model, "hf_device_map", None)
    if isinstance(hf_map, dict) and len(set(map(str, hf_map.values()))) > 1:
        counts: dict[str, int] = {}
        for d in hf_map.values():
            counts[str(d)] = counts.get(str(d), 0) + 1
        return "auto: " + ", ".join(f"{d}={n}" for d, n in sorted(counts.items()))
    return "single"

