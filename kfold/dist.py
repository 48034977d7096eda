"""Multi-process awareness for runs under ``accelerate launch`` / ``torchrun``.

Every process trains (HF Trainer: data parallel, or FSDP under an FSDP launch config); only the main process
(RANK 0) writes artifacts, and the others wait at a barrier so that they read what it wrote. ``start`` brings the
process group up at the beginning of a stage, so the first barrier (folds file, resolved config) already holds.

Rule that keeps the ranks' collectives in step: a block that only rank 0 runs (``main_write``, ``alone``) makes no
collective; inside it ``llm.placement.solo`` turns barriers, main-process-first and sharded prediction off. And a
collective that still waits too long (``collective_timeout_s``) raises, named by ``stage_guard``, instead of hanging.
"""

from __future__ import annotations

import contextlib
import os

# what torch / gloo / NCCL say when a collective waited past the group's timeout or a peer process is gone
_FAILURE_SIGNS = ("timed out", "collective operation timeout", "connection closed by peer",
                  "connection reset by peer", "broken pipe", "socket closed")


class CollectiveFailure(RuntimeError):
    """A collective (barrier, all-gather, all-reduce) of a multi-process launch failed: timeout or a lost peer."""


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def start(timeout_s: float | None = None) -> None:
    """Start the launch's process group (gloo when CUDA is absent) before the stage's first write; no-op alone.
    ``timeout_s``: the config's ``collective_timeout_s`` (the first start of a process sets it)."""
    from arena_kd.llm.placement import launch_world_size  # here: importing kfold must not load torch

    if launch_world_size() <= 1:
        return
    import torch

    from arena_kd.llm.placement import start_launch_state

    start_launch_state(on_cpu=not torch.cuda.is_available(), timeout_s=timeout_s)


def main_first():
    """Context: the main process runs the block first (e.g. creates the folds file), then the others (they read it)."""
    from arena_kd.llm.placement import main_process_first

    return main_process_first()


def barrier() -> None:
    """torch.distributed barrier when a process group is up; no-op in single-process runs and inside ``alone``."""
    from arena_kd.llm.placement import in_solo, launch_world_size

    if launch_world_size() <= 1 or in_solo():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def alone():
    """Context: the block runs on this process only (no collective inside; see ``llm.placement.solo``)."""
    from arena_kd.llm.placement import solo

    return solo()


def main_write(fn, *args, **kwargs):
    """Run a writer on the main process only (alone: no collective inside it), then synchronise every process."""
    result = None
    if is_main_process():
        with alone():
            result = fn(*args, **kwargs)
    barrier()
    return result


def collective_failure(exc: BaseException, stage: str) -> CollectiveFailure | None:
    """The one-line error for ``exc`` when it is a failed collective of a multi-process launch, else None."""
    from arena_kd.llm.placement import collective_timeout_s, launch_world_size

    world = launch_world_size()
    if world <= 1 or isinstance(exc, CollectiveFailure):
        return None
    text = str(exc).strip()
    dist_error = any(c.__name__ in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError")
                     for c in type(exc).__mro__)
    if not dist_error and not (isinstance(exc, RuntimeError) and any(s in text.lower() for s in _FAILURE_SIGNS)):
        return None
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    timeout = collective_timeout_s()
    limit = f"collective_timeout_s={timeout:g}" if timeout is not None else "collective_timeout_s"
    return CollectiveFailure(
        f"rank {rank()} of {world}, stage '{stage}': a collective failed ({type(exc).__name__}: {first}); another "
        f"process of the launch fell out of step, died or did not answer within {limit}: see the other ranks' "
        "errors")


@contextlib.contextmanager
def stage_guard(stage: str):
    """Context: a failed collective inside the stage is raised as one CollectiveFailure naming rank and stage."""
    try:
        yield
    except Exception as exc:
        failure = collective_failure(exc, stage)
        if failure is None:
            raise
        raise failure from exc
