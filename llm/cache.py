"""Folders the loaders build once under the workdir (trained BPE tokenizers, seeded random backbones, dequantised
GGUF copies): each is written to a temporary sibling and published with one rename, so a reader never sees half."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def temporary_sibling(final: Path) -> Path:
    """Where this process builds ``final`` before :func:`publish_dir` (per process: concurrent builders never mix)."""
    return final.with_name(final.name + f".tmp{os.getpid()}")


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished folder into place; if another process got there first, keep theirs (contents are
    deterministic)."""
    try:
        if final.exists():
            raise FileExistsError(final)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
