"""Run ``arena_kd.cli`` under a multi-process launch and record, per rank, what the process did.

Used by tests/test_distributed*.py as the launched program: ``accelerate launch --config_file C tests/_dist_probe.py
RECORD_DIR <cli args...>``. Each rank writes ``RECORD_DIR/rank<r>.json`` at exit (outside the pipeline's workdir) with:
  world: torch.distributed world size seen by the Trainer; backend
  train_calls: one entry per Trainer.train (global_step, rows this rank trained on, is_fsdp_enabled, sharded: any
               trained parameter is a DTensor shard)
  writes: every path this process published (os.replace / os.rename targets, files opened for writing)
  predict_forwards: forward calls of the trained model during prediction, per predict call
Optional faults, by environment variable:
  PROBE_KILL_AFTER_SAVE_STEP=N  every rank writes its record and SIGKILLs itself once the Trainer has saved the
                                checkpoint of step N (all ranks meet at a barrier first, so the checkpoint is whole)
  PROBE_SLOW_MAIN_WRITE=SUFFIX  rank 0 waits 2 s before publishing a path ending in SUFFIX (a rank that does not
                                wait for the main process then finds nothing there and makes its own)
"""

from __future__ import annotations

import atexit
import builtins
import io
import json
import os
import sys
from pathlib import Path

record_dir = Path(sys.argv[1])
cli_args = sys.argv[2:]
rank = int(os.environ.get("RANK", "0"))
record: dict = {"rank": rank, "world_env": int(os.environ.get("WORLD_SIZE", "1")), "train_calls": [], "writes": [],
                "predict_forwards": []}

_replace, _rename, _open, _io_open = os.replace, os.rename, builtins.open, io.open


def _note(path) -> None:
    record["writes"].append(os.path.abspath(os.fspath(path)))


def _replace_probe(src, dst, *a, **k):
    slow = os.environ.get("PROBE_SLOW_MAIN_WRITE")
    if slow and rank == 0 and os.fspath(dst).endswith(slow):
        import time

        time.sleep(2.0)
    _note(dst)
    return _replace(src, dst, *a, **k)


def _rename_probe(src, dst, *a, **k):
    _note(dst)
    return _rename(src, dst, *a, **k)


def _writing(mode) -> bool:
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def _open_probe(file, mode="r", *a, **k):
    if _writing(mode) and isinstance(file, (str, bytes, os.PathLike)):
        _note(file)
    return _open(file, mode, *a, **k)


def _io_open_probe(file, mode="r", *a, **k):
    if _writing(mode) and isinstance(file, (str, bytes, os.PathLike)):
        _note(file)
    return _io_open(file, mode, *a, **k)


os.replace, os.rename, builtins.open, io.open = _replace_probe, _rename_probe, _open_probe, _io_open_probe


def _install_trainer_probe() -> None:
    import torch

    from arena_kd.llm import predict, train

    orig_train = train.ClassifierTrainer.train
    orig_step = train.ClassifierTrainer.training_step

    def training_step(self, model, inputs, *a, **k):
        self._probe_rows = getattr(self, "_probe_rows", 0) + int(inputs["labels"].shape[0])
        return orig_step(self, model, inputs, *a, **k)

    def train_probe(self, *a, **k):
        out = orig_train(self, *a, **k)
        import torch.distributed as dist
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        record["train_calls"].append({
            "resumed_from": k.get("resume_from_checkpoint"),
            # the classes FSDP made shard units of (FSDP2 renames a wrapped class Foo to FSDPFoo)
            "wrapped": sorted({type(m).__name__ for m in self.model.modules() if isinstance(m, FSDPModule)}),
            "global_step": int(self.state.global_step),
            "rows": int(getattr(self, "_probe_rows", 0)),
            "world": dist.get_world_size() if dist.is_initialized() else 1,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "is_fsdp_enabled": bool(getattr(self, "is_fsdp_enabled", False)),
            "sharded": any(isinstance(p, DTensor) for p in self.model.parameters() if p.requires_grad),
        })
        return out

    orig_logits = predict.logits_for_ids

    def logits_probe(model, *a, **k):
        calls = {"n": 0}
        handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        try:
            return orig_logits(model, *a, **k)
        finally:
            handle.remove()
            record["predict_forwards"].append(calls["n"])

    kill_step = int(os.environ.get("PROBE_KILL_AFTER_SAVE_STEP", "0"))
    orig_init = train.ClassifierTrainer.__init__

    from transformers import TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == kill_step:
                import signal

                import torch.distributed as dist

                dist.barrier()  # every rank has written its part of the checkpoint
                record["killed_after_step"] = kill_step
                _dump()
                os.kill(os.getpid(), signal.SIGKILL)

    def init_probe(self, *a, **k):
        orig_init(self, *a, **k)
        if kill_step:
            self.add_callback(KillAfterSave())

    train.ClassifierTrainer.__init__ = init_probe
    train.ClassifierTrainer.training_step = training_step
    train.ClassifierTrainer.train = train_probe
    predict.logits_for_ids = logits_probe
    del torch


def _dump() -> None:
    record_dir.mkdir(parents=True, exist_ok=True)
    with _open(record_dir / f"rank{rank}.json", "w") as f:
        json.dump(record, f, indent=1)


atexit.register(_dump)
_install_trainer_probe()
from arena_kd.cli import main  # noqa: E402

sys.argv = ["arena-kd", *cli_args]
main()
