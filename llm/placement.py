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

import os
from typing import Any

import torch

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


def start_launch_state(on_cpu: bool):
    """Start accelerate's process state (the process group) of a multi-process launch; None without a launcher.

    Called before the model is loaded, so barriers and the main-process-first cache builds work from the start.
    ``on_cpu``: ask for the gloo backend (the program's choice: accelerate's ``--cpu`` launches start one process).

    CPU rehearsal of an FSDP launch: accelerate 1.15 turns an FSDP launch into FSDP only for accelerator
    distributed types (MULTI_GPU, ...); with gloo on CPU it reports MULTI_CPU and the Trainer would silently train
    unsharded data parallel. For that case only (no CUDA, ``ACCELERATE_USE_FSDP``) the shared state is relabelled
    MULTI_GPU after the gloo group is up: the device stays the CPU, and accelerate's FSDP2 path (``fully_shard``,
    which shards and trains on CPU with gloo) then does the sharding exactly as on GPUs.
    """
    if launch_world_size() <= 1:
        return None
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=on_cpu)
    if on_cpu and sharding_launch() == "fsdp" and state.distributed_type == DistributedType.MULTI_CPU:
        if os.environ.get("FSDP_VERSION", "1") != "2":
            # FSDP1 needs an accelerator device in accelerate ("no available devices found", measured here)
            raise UserError("FSDP on CPU: only FSDP2 (fsdp_version: 2, torch fully_shard) shards on CPU with gloo; "
                            "use configs/accelerate/fsdp-qlora-cpu.yaml")
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return state


def main_process_first():
    """Context: under a started multi-process launch the main process runs the block first, the others after it
    (they then find what it built: folds file, BPE tokenizer, random backbone); a no-op otherwise."""
    import contextlib

    if launch_world_size() <= 1:
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
