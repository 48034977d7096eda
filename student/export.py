"""The student export: everything `submission` needs, loadable with no access to the training run.

Layout of ``<workdir>/student/export/``::

  model/                    merged classifier (safetensors, export_dtype) — or the base model when export_merged=false
  adapter/                  LoRA adapter (export_merged=false only)
  tokenizer/                tokenizer files
  export.json               render settings, load settings, predict settings, the resolved config, hashes
  reference_logits.parquet  logits of the trained model on a few training rows (a self-check for loaders)
  config.resolved.yaml

``load_export(export_dir, quantization=..., dtype=...)`` returns (model, tokenizer, settings) using
plain transformers/peft, so it works without the llm/ package's training-time state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from arena_kd.config import PipelineConfig, write_resolved
from arena_kd.errors import UserError
from arena_kd.io import atomic_write_json

EXPORT_FORMAT = 1
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def render_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """Rendering at inference: student.predict.max_length (else render.max_length), truncation, prompt_fraction."""
    return {
        "max_length": cfg.student.predict.max_length or cfg.render.max_length,
        "truncation": cfg.render.truncation,
        "prompt_fraction": cfg.render.prompt_fraction,
        "template": cfg.render.template,
    }


def load_settings(model, tokenizer, info: dict | None, cfg: PipelineConfig) -> dict[str, Any]:
    """How to load the exported model: attention implementation, softcapping, padding side, pad id."""
    info = dict(info or {})
    mcfg = model.config
    softcap = getattr(mcfg, "attn_logit_softcapping", None)
    attn = info.get("attn_implementation") or getattr(mcfg, "_attn_implementation", None) or cfg.student.model.attn_implementation
    return {
        "attn_implementation": attn if attn in ("eager", "sdpa", "flash_attention_2") else None,
        "disable_softcapping": bool(info.get("disable_softcapping", cfg.student.model.disable_softcapping)),
        "attn_logit_softcapping": softcap,
        "padding_side": info.get("padding_side") or getattr(tokenizer, "padding_side", "left"),
        "pad_token_id": getattr(mcfg, "pad_token_id", None),
        "num_labels": int(getattr(mcfg, "num_labels", 3)),
        "model_type": getattr(mcfg, "model_type", None),
    }


def _base_model(model):
    """Strip a peft wrapper (after merging) to the transformers model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_export(
    export_dir: Path,
    cfg: PipelineConfig,
    *,
    merged_model=None,
    base_model=None,
    adapter_dir: Path | None = None,
    tokenizer,
    settings_load: dict[str, Any],
    hashes: dict[str, str],
    extra: dict[str, Any] | None = None,
    reference=None,
) -> Path:
    """Write model (merged, or base + adapter), tokenizer and export.json into ``export_dir`` (replaced as a whole).

    Written into ``<export_dir>.tmp`` first and renamed, so a killed export never leaves a half folder.
    """
    export_dir = Path(export_dir)
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = _DTYPES[cfg.student.export_dtype]
    if merged_model is not None:
        m = _base_model(merged_model).to(dtype)
        m.save_pretrained(tmp / "model", safe_serialization=True)
    else:
        if base_model is None or adapter_dir is None:
            raise ValueError("unmerged export needs base_model and adapter_dir")
        base = _base_model(base_model)
        if any("lora_" in n or ".base_layer." in n for n, _ in base.named_parameters()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError("unmerged export: the base model still carries LoRA layers; pass a clean base")
        base.to(dtype).save_pretrained(tmp / "model", safe_serialization=True)
        shutil.copytree(adapter_dir, tmp / "adapter")
    tokenizer.save_pretrained(tmp / "tokenizer")
    settings = {
        "format": EXPORT_FORMAT,
        "merged": merged_model is not None,
        "dtype": cfg.student.export_dtype,
        "labels": ["winner_model_a", "winner_model_b", "winner_tie"],
        "render": render_settings(cfg),
        "load": settings_load,
        "predict": cfg.student.predict.model_dump(mode="json"),
        "hashes": hashes,
        "config": cfg.to_dict(),
        **(extra or {}),
    }
    if reference is not None:
        from arena_kd.io import write_keyed_table

        write_keyed_table(tmp / "reference_logits.parquet", reference,
                          {"what": "logits of the trained student (original A/B order, no TTA) on the first training rows",
                           "max_length": settings["render"]["max_length"]})
    atomic_write_json(tmp / "export.json", settings)
    write_resolved(cfg, tmp)
    old = export_dir.with_name(export_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if export_dir.exists():
        export_dir.rename(old)
    tmp.rename(export_dir)
    shutil.rmtree(old, ignore_errors=True)
    return export_dir


def read_json_record(path: str | Path, remedy: str) -> dict[str, Any]:
    """A stage's JSON record (final.json, export.json) as a dict; a truncated, non-UTF-8 or non-object file raises
    one UserError line naming the file, why, and ``remedy`` (e.g. "rerun with --force to redo the final stage")."""
    path = Path(path)
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(done, dict):
            raise ValueError(f"holds a JSON {type(done).__name__}, not an object")
        return done
    except json.JSONDecodeError as exc:
        why = f"invalid JSON: {exc.msg} at line {exc.lineno}"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    raise UserError(f"{path}: unreadable {path.name} ({why}); {remedy}")


def read_export_settings(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / "export.json"
    if not path.is_file():
        raise UserError(f"{path}: not a student export (export.json missing) — run `arena-kd distill` first")
    return read_json_record(path, "rerun `arena-kd distill --force` to export again")


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise UserError(f"load_export: dtype must be auto, fp32, fp16 or bf16, got '{dtype}'")
        return _DTYPES[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_export(export_dir: str | Path, *, quantization: str = "none", dtype: str = "auto", device: str | None = None):
    """Load a student export → (model in eval mode, tokenizer, settings dict).

    quantization: none | 8bit | 4bit (bitsandbytes; the classification head stays unquantized).
    dtype: auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16. settings["render"] has max_length,
    truncation, prompt_fraction; settings["load"] the attention/softcapping/padding settings.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    export_dir = Path(export_dir)
    settings = read_export_settings(export_dir)
    if quantization not in ("none", "8bit", "4bit"):
        raise UserError(f"load_export: quantization must be none, 8bit or 4bit, got '{quantization}'")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _resolve_dtype(dtype, device)
    load = settings.get("load", {})
    config = AutoConfig.from_pretrained(export_dir / "model")
    if load.get("disable_softcapping") and hasattr(config, "attn_logit_softcapping"):
        config.attn_logit_softcapping = None
    kwargs: dict[str, Any] = {"config": config, "dtype": torch_dtype}
    if load.get("attn_implementation"):
        kwargs["attn_implementation"] = load["attn_implementation"]
    if quantization != "none":
        skip = ["score", "classifier"]
        if quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch_dtype, llm_int8_skip_modules=skip,
            )
        kwargs["device_map"] = {"": device}
    model = AutoModelForSequenceClassification.from_pretrained(export_dir / "model", **kwargs)
    if quantization == "none":
        model = model.to(device)
    elif str(device).startswith("cpu"):
        from llm.loading import keep_bnb_4bit_layout_on_cpu

        keep_bnb_4bit_layout_on_cpu(model)
    if not settings.get("merged", True):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, export_dir / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(export_dir / "tokenizer")
    if load.get("padding_side"):
        tokenizer.padding_side = load["padding_side"]
    if tokenizer.pad_token_id is None and load.get("pad_token_id") is not None:
        tokenizer.pad_token_id = load["pad_token_id"]
    model.eval()
    return model, tokenizer, settings


def verify_export(export_dir: str | Path, *, quantization: str = "none", dtype: str = "auto", device: str | None = None,
                  model=None) -> dict[str, float]:
    """Compare the export's predictions with ``reference_logits.parquet`` (the trained model's logits).

    Runs each stored reference row's ``input_ids`` through the loaded export (one row at a time: no padding)
    and returns {"rows", "max_abs_logit_diff", "max_abs_prob_diff"}. Pass ``model`` to check one already loaded.
    """
    import numpy as np

    from arena_kd.io import read_keyed_table

    export_dir = Path(export_dir)
    ref_path = export_dir / "reference_logits.parquet"
    if not ref_path.is_file():
        raise UserError(f"{ref_path}: no reference logits in this export (student.reference_rows=0)")
    ref, _ = read_keyed_table(ref_path)
    if model is None:
        model, _, _ = load_export(export_dir, quantization=quantization, dtype=dtype, device=device)
    dev = next(model.parameters()).device
    got = []
    with torch.no_grad():
        for ids in ref["input_ids"]:
            x = torch.tensor([list(ids)], dtype=torch.long, device=dev)
            got.append(model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float().cpu().numpy()[0])
    got = np.asarray(got)
    want = ref[["logit_a", "logit_b", "logit_tie"]].to_numpy(dtype=np.float64)

    def probs(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return {
        "rows": int(len(ref)),
        "max_abs_logit_diff": float(np.abs(got - want).max()) if len(ref) else 0.0,
        "max_abs_prob_diff": float(np.abs(probs(got) - probs(want)).max()) if len(ref) else 0.0,
    }
