"""Where a classifier's weights live, decided once per process from the launch and ``model.device_map``.

Three placements, and what each costs per GPU (see teachers/README.md for the numbers):

* ``single`` (default): the whole model on this process's device (``LOCAL_RANK`` under accelerate / torchrun).
  With a plain multi-process launch that is data parallelism: every GPU holds a full copy.
* ``single`` under an FSDP launch (``ACCELERATE_USE_FSDP``, set by ``accelerate launch`` with
  ``distributed_type: FSDP``, e.g. ``configs/accelerate/fsdp-qlora.yaml``): every rank loads the model, the
  Trainer's accelerator then shards it (each GPU keeps 1/world of the weights between layers). Quantized models
  follow the FSDP-QLoRA rules of the peft / bitsandbytes docs: 4-bit storage dtype equal to the dtype the
  sharded parameters are kept in (bf16, or fp32 under fp16 mixed precision), no ``prepare_model_for_kbit_training``
  (its fp32 upcast of the non-quantized weights breaks FSDP's uniform-dtype flattening: "Must flatten tensors
  with uniform dtype") and LoRA weights left in that dtype (``autocast_adapter_dtype=False``), as TRL does for
  its ``is_sharded_qlora`` case.
* ``auto``: one process spreads the layers over every visible GPU (then CPU) with ``device_map="auto"`` and an
  optional ``max_memory`` cap. For a model larger than one card; only one GPU computes at a time. accelerate
  refuses to train such a model under a distributed launch, so it is refused here with one line instead.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from arena_kd.common.config import COLLECTIVE_TIMEOUT_S
from arena_kd.common.errors import UserError


def launch_world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` set by accelerate / torchrun); 1 without a launcher."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def sharding_launch() -> str | None:
    """'fsdp' or 'zero3' when the launcher shards parameters over the processes; None for data parallel / one
    process."""
    if launch_world_size() <= 1:
        return None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return "fsdp"
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")
    if deepspeed and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "zero3"
    return None


def sharded_storage_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """dtype the sharded parameters (and the 4-bit storage) are kept in: bf16 stays bf16; fp16 training keeps
    fp32 master weights (fp16 mixed precision autocasts the compute), per the peft FSDP-QLoRA docs."""
    return torch.bfloat16 if compute_dtype == torch.bfloat16 else torch.float32


def placement_kwargs(device_map: str, max_memory: dict[str, str] | None, device: torch.device,
                     quantized: bool) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that place the weights (empty: the caller moves the model to
    ``device``)."""
    if device_map == "auto":
        world = launch_world_size()
        if world > 1:
            raise UserError(
                f"model.device_map=auto: spreads one model over the GPUs of a single process and cannot run under a "
                f"{world}-process launch (accelerate refuses to train such a model distributed); launch one process, "
                "or shard the model over the processes with an FSDP launch (configs/accelerate/fsdp-qlora.yaml) "
                "and device_map: single"
            )
        kw: dict[str, Any] = {"device_map": "auto"}
        if max_memory:
            kw["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in max_memory.items()}
        return kw
    if quantized:  # bitsandbytes needs the target device at load time
        return {"device_map": {"": (device.index or 0) if device.type == "cuda" else "cpu"}}
    return {}


# the launch's distributed type before any Accelerator relabelled it FSDP; the process group's collective timeout
_LAUNCH: dict[str, Any] = {"type": None, "timeout_s": None}
_SOLO = {"depth": 0}  # > 0: this process runs a block alone (rank 0's writers): no collectives inside it


def start_launch_state(on_cpu: bool, timeout_s: float | None = None):
    """Start accelerate's process state (the process group) of a multi-process launch; None without a launcher.

    Called before the model is loaded, so barriers and the main-process-first cache builds work from the start.
    ``on_cpu``: ask for the gloo backend (the program's choice: accelerate's ``--cpu`` launches start one process).
    ``timeout_s`` (default ``common.config.COLLECTIVE_TIMEOUT_S``; only the first call of a process sets it): how
    long any collective of this group may wait for the other processes before it raises
    (``kfold.dist.stage_guard`` names the rank and stage), instead of a hang.

    CPU rehearsal of an FSDP launch: accelerate 1.15 turns an FSDP launch into FSDP only for accelerator
    distributed types (MULTI_GPU, ...); with gloo on CPU it reports MULTI_CPU and the Trainer would silently train
    unsharded data parallel. For that case only (no CUDA, ``ACCELERATE_USE_FSDP``) the shared state is relabelled
    MULTI_GPU after the gloo group is up: the device stays the CPU, and accelerate's FSDP2 path (``fully_shard``,
    which shards and trains on CPU with gloo) then does the sharding exactly as on GPUs.
    """
    if launch_world_size() <= 1:
        return None
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import DistributedType

    first = not PartialState._shared_state
    seconds = COLLECTIVE_TIMEOUT_S if timeout_s is None else float(timeout_s)
    state = PartialState(cpu=on_cpu, timeout=timedelta(seconds=seconds)) if first else PartialState(cpu=on_cpu)
    if first:
        _LAUNCH["timeout_s"] = seconds
    if on_cpu and sharding_launch() == "fsdp" and state.distributed_type == DistributedType.MULTI_CPU:
        if os.environ.get("FSDP_VERSION", "1") != "2":
            # FSDP1 needs an accelerator device in accelerate ("no available devices found", measured here)
            raise UserError("FSDP on CPU: only FSDP2 (fsdp_version: 2, torch fully_shard) shards on CPU with gloo; "
                            "use configs/accelerate/fsdp-qlora-cpu.yaml")
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    if _LAUNCH["type"] is None:
        _LAUNCH["type"] = PartialState._shared_state["distributed_type"]
    return state


def fresh_accelerator_state() -> None:
    """Forget the previous model's accelerate state before the next Trainer is built (one call per loaded model).

    accelerate keeps one ``AcceleratorState`` per process, and under an FSDP launch its FSDP plugin is shaped by the
    first model it prepares: the auto-wrap classes (that model's ``_no_split_modules``, e.g. Gemma2DecoderLayer; the
    LoRA wrap policy built by transformers' ``update_fsdp_plugin_peft``) and the mixed-precision policy (the 4-bit
    storage dtype of a QLoRA model). A second architecture in the same launch then fails with "Could not find the
    transformer layer class Gemma2DecoderLayer". Dropping that state makes the next Accelerator build a new plugin
    from the launch's settings and wrap the model it is given by that model's own layer classes. The process group
    (``PartialState``) stays; its distributed type is put back to the launch's (the first Accelerator relabels it
    FSDP, and a state built from FSDP would not attach an FSDP plugin again). No-op without a launcher.
    """
    if launch_world_size() <= 1 or _LAUNCH["type"] is None:
        return
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=False)
    PartialState._shared_state["distributed_type"] = _LAUNCH["type"]


@contextlib.contextmanager
def solo():
    """Context: this process runs the block alone (rank 0's writers, the stages after training) while the others
    wait outside it or have left. Inside, nothing waits for another process: ``main_process_first`` is a no-op,
    ``in_solo`` tells prediction to predict every row here instead of sharding them over the group. Without this, a
    barrier inside a rank-0-only block meets an unrelated barrier of another rank and the ranks' collectives drift
    apart (the hang of `arena-kd all` under 2 processes: the export's loader barriers on rank 0 released rank 1
    into the next stage early)."""
    _SOLO["depth"] += 1
    try:
        yield
    finally:
        _SOLO["depth"] -= 1


def in_solo() -> bool:
    return _SOLO["depth"] > 0


def collective_timeout_s() -> float | None:
    """The collective timeout this process's group was started with (None: not started here)."""
    return _LAUNCH["timeout_s"]


def sharded_model(model) -> bool:
    """True when ``model`` has FSDP-sharded submodules (FSDP1 or FSDP2): its every forward is a collective."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules())


def main_process_first():
    """Context: under a started multi-process launch the main process runs the block first, the others after it
    (they then find what it built: folds file, BPE tokenizer, random backbone); a no-op otherwise."""
    if launch_world_size() <= 1 or in_solo():
        return contextlib.nullcontext()
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def check_sharded_training(model_cfg, optim: str, save_steps: int) -> None:
    """Refuse, with one line, settings known to fail when the launch shards the model (FSDP / ZeRO-3)."""
    sharded = sharding_launch()
    if sharded is None:
        return
    # ZeRO-3 is detected so that it is refused, not half-run: no lockstep prediction / gathered save for it
    if sharded == "zero3":
        raise UserError("DeepSpeed ZeRO-3 launch: not supported (sharded prediction and adapter saving are implemented "
                        "for FSDP); use configs/accelerate/fsdp-qlora.yaml, or ZeRO-2 / data parallel")
    if model_cfg.quantization == "8bit":
        raise UserError(f"model.quantization=8bit: bitsandbytes 8-bit weights cannot be sharded by {sharded}; "
                        "use 4bit (FSDP-QLoRA) or a data-parallel launch")
    if "paged" in optim and "8bit" in optim and save_steps > 0:
        raise UserError(
            f"train.optim={optim} with train.save_steps={save_steps} under {sharded}: saving a checkpoint fails with "
            "paged 8-bit AdamW (documented in peft's FSDP-QLoRA guide); use optim: adamw_torch, or save_steps: 0"
        )


def free_accelerator_memory() -> None:
    """Collect garbage and return cached CUDA blocks (between folds, after a model is dropped or an OOM); no-op on
    CPU. Best effort, never raises: it runs in failure handlers (a chunk that hit a CUDA error), where a second error
    from ``empty_cache`` must not replace the first."""
    import gc

    gc.collect()
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except RuntimeError:  # a CUDA context already in error: nothing more to free
        pass
