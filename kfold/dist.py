"""Multi-process awareness for runs under ``accelerate launch`` / ``torchrun``.

Every process trains (HF Trainer: data parallel, or FSDP under an FSDP launch config); only the main process
(RANK 0) writes artifacts, and the others wait at a barrier so that they read what it wrote. ``start`` brings the
process group up at the beginning of a stage, so the first barrier (folds file, resolved config) already holds.
"""

from __future__ import annotations

import os


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def start() -> None:
    """Start the launch's process group (gloo when CUDA is absent) before the stage's first write; no-op alone."""
    from arena_kd.llm.placement import launch_world_size  # here: importing kfold must not load torch

    if launch_world_size() <= 1:
        return
    import torch

    from arena_kd.llm.placement import start_launch_state

    start_launch_state(on_cpu=not torch.cuda.is_available())


def main_first():
    """Context: the main process runs the block first (e.g. creates the folds file), then the others (they read it)."""
    from arena_kd.llm.placement import main_process_first

    return main_process_first()


def barrier() -> None:
    """torch.distributed barrier when a process group is up; no-op in single-process runs."""
    from arena_kd.llm.placement import launch_world_size

    if launch_world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def main_write(fn, *args, **kwargs):
    """Run a writer on the main process only, then synchronise every process."""
    result = fn(*args, **kwargs) if is_main_process() else None
    barrier()
    return result
