"""Multi-process awareness for runs under ``accelerate launch`` / ``torchrun``.

Every process trains (HF Trainer does data parallelism); only the main process (RANK 0) writes
artifacts, and the others wait at a barrier so that they read what it wrote.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """torch.distributed barrier when a process group is up; no-op in single-process runs."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def main_write(fn, *args, **kwargs):
    """Run a writer on the main process only, then synchronise every process."""
    result = fn(*args, **kwargs) if is_main_process() else None
    barrier()
    return result
