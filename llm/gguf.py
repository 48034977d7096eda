"""GGUF checkpoints (``model.gguf_file``) dequantised once into a plain safetensors folder under
``<workdir>/gguf/``: later loads take seconds, and HF Trainer refuses GGUF-flagged models."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from arena_kd.common.errors import UserError
from arena_kd.llm.cache import publish_dir, temporary_sibling


def dequantized_gguf(source: str, gguf_file: str, workdir: str | Path) -> Path:
    """Plain safetensors copy of a GGUF checkpoint under ``<workdir>/gguf/<name>-<hash>/`` (built once,
    atomically)."""
    from transformers import AutoModelForCausalLM

    gguf_path = Path(source) / gguf_file
    size = gguf_path.stat().st_size if gguf_path.exists() else 0
    key = hashlib.sha256(f"{gguf_path.resolve()}:{size}".encode()).hexdigest()[:12]
    final = Path(workdir) / "gguf" / f"{Path(gguf_file).stem}-{key}"
    if (final / "config.json").is_file():
        return final
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.gguf_file: cannot load '{gguf_path}': {str(exc).splitlines()[0]}") from None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.hf_quantizer = None
    lm.is_quantized = False
    tmp = temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    publish_dir(tmp, final)
    return final
