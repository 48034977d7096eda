"""Device, dtype and quantization rules of a classifier: which device a process uses, which dtype a GPU computes in
natively (bf16 only from compute capability 8), which combinations are refused, and the bitsandbytes settings."""

from __future__ import annotations

import os

import torch

from arena_kd.common.errors import UserError
from arena_kd.llm.head import HEAD_NAMES

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or by default this process's GPU (``LOCAL_RANK`` under a launch), else the CPU."""
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local = os.environ.get("LOCAL_RANK")  # one GPU per process under accelerate/torchrun
        index = int(local) if local is not None and local.isdigit() else torch.cuda.current_device()
        return torch.device("cuda", index)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device}: CUDA is not available on this machine")
    return dev


def native_bf16(device: str | torch.device = "cuda") -> bool:
    """True when the GPU computes bf16 natively (compute capability >= 8: A100, L4, H100...); False without CUDA.

    A T4 (7.5) only emulates bf16, several times slower than fp16, and ``torch.cuda.is_bf16_supported()`` says yes to
    emulation by default: every "bf16 or fp16?" choice in the project (loaders, export, GPU benchmark) asks this
    instead.
    """
    try:
        major, _ = torch.cuda.get_device_capability(torch.device(device))
    except Exception:  # noqa: BLE001 - no CUDA
        return False
    return major >= 8


def resolve_dtype(requested: str, device: torch.device, training: bool) -> torch.dtype:
    """dtype rules: auto = bf16 on bf16 GPUs, fp16 on other GPUs (T4), fp32 on CPU; impossible combinations refused."""
    if device.type == "cuda":
        bf16_ok = native_bf16(device)
        if requested == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
        if requested == "bf16" and not bf16_ok:
            name = torch.cuda.get_device_name(device)
            raise UserError(f"model.dtype=bf16: GPU '{name}' has no bf16 support; use dtype: fp16 (or auto)")
        return DTYPES[requested]
    if requested == "auto":
        return torch.float32
    if requested == "fp16" and training:
        raise UserError("model.dtype=fp16: fp16 training needs a GPU (no CPU grad scaler); "
                        "use dtype: fp32 or bf16 on CPU")
    return DTYPES[requested]


def quantization_config(kind: str, compute_dtype: torch.dtype, storage_dtype: torch.dtype | None = None):
    """BitsAndBytesConfig for '8bit' / '4bit' (NF4, double quant, compute + storage dtype); None for 'none'.

    The classification head is never quantized (it is trained / saved in full precision). ``storage_dtype``
    (default: the compute dtype) is the dtype the packed 4-bit bytes are stored as; under FSDP it must equal the
    dtype of the other sharded parameters (``llm.placement.sharded_storage_dtype``).
    """
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(HEAD_NAMES))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=storage_dtype or compute_dtype,
        llm_int8_skip_modules=list(HEAD_NAMES),
    )


def keep_bnb_4bit_layout_on_cpu(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel; returns the layers touched.

    bitsandbytes (0.50.2 measured) repacks a ``Linear4bit`` the first time it runs in eval mode without grad on a
    CPU with AVX512-BF16. The repack (a) crashes on layers narrower than the quantization block
    ("shape '[32, 0]' is invalid", seen on the tiny test models) and (b) stores the block scales in bf16, so the
    same weights predict differently after training than during it. CPU runs are for tests and rehearsals, where
    agreement with the trained model matters more than the kernel's speed; CUDA is untouched.
    """
    touched = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched
