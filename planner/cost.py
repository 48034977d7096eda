"""The planner's cost model: GPU memory and low / expected / high wall time of one inference or training stage.

  forward FLOPs = 2 x block_params x tokens x PADDING_OVERHEAD + 4 x layers x heads x head_dim x sum(n_row^2)
  training      = (TRAIN_FLOPS_FACTOR [+ RECOMPUTE_FLOPS_FACTOR with gradient checkpointing]) x forward
  seconds       = FLOPs / (peak_fp16 x efficiency x data-parallel GPUs)
low = fewest tokens at the highest efficiency; high = most tokens at the lowest (arena_kd.planner.specs.Efficiency).
Memory per GPU = weights (blocks at the weight precision + 16-bit embeddings) + activations of one batch
(+ eager attention scores; + LoRA params, grads and optimizer state when training) + CUDA context.
Placement (``placement``) is the one place that decides how a stage uses several GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from arena_kd.common.config_model import ModelConfig
from arena_kd.common.durations import format_seconds
from arena_kd.planner.calibration import CALIBRATED_SPREAD, Calibrated
from arena_kd.planner.lengths import Lengths
from arena_kd.planner.specs import (
    BYTES_PER_PARAM,
    HARDWARE,
    PADDING_OVERHEAD,
    RECOMPUTE_FLOPS_FACTOR,
    TRAIN_EFFICIENCY_RATIO,
    TRAIN_FLOPS_FACTOR,
    Arch,
    Efficiency,
    Hardware,
)

WHICH = ("low", "expected", "high")
FP32_FRACTION = 0.25
"""Assumed: fp32 compute runs at ~1/4 of the fp16 tensor peak (T4 1/8, A100 TF32 1/2); only tiny test configs use it."""
ALLOCATOR_SLACK_GIB = 0.5
"""Assumed: allocator fragmentation and temporary buffers on top of what the formulas count."""


@dataclass
class Estimate:
    stage: str
    model: str
    precision: str
    hardware: str
    rows: float
    passes: float
    tokens: float
    flops: float
    seconds: tuple[float, float, float] | None  # (low, expected, high); None = does not fit in memory
    mem_gib: float | None
    placement: str
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        t = self.seconds
        return {
            "stage": self.stage, "model": self.model, "weights": self.precision,
            "rows x passes": f"{self.rows:,.0f} x {self.passes:g}", "Mtokens": f"{self.tokens / 1e6:,.1f}",
            "low": format_seconds(t[0]) if t else "n/a", "expected": format_seconds(t[1]) if t else "n/a",
            "high": format_seconds(t[2]) if t else "n/a",
            "GiB/GPU": f"{self.mem_gib:.1f}" if self.mem_gib is not None else "n/a", "placement": self.placement,
        }

    def to_json(self) -> dict[str, Any]:
        t = self.seconds
        return {"name": self.stage, "model": self.model, "precision": self.precision, "hardware": self.hardware,
                "rows": self.rows, "passes": self.passes, "tokens": self.tokens, "flops": self.flops,
                "low_s": t[0] if t else None, "expected_s": t[1] if t else None, "high_s": t[2] if t else None,
                "mem_gib_per_gpu": self.mem_gib, "placement": self.placement, "sources": self.sources,
                "notes": self.notes}


def fixed_stage(stage: str, hardware: str, seconds: tuple[float, float, float], source: str,
                rows: float = 0) -> Estimate:
    """A stage whose time comes from a rate, not from FLOPs (loading, the stacker)."""
    return Estimate(stage, "-", "-", hardware, rows, 1, 0.0, 0.0, seconds, None, "-", [source])


def compute_dtype(dtype: str, hw: Hardware) -> str:
    if dtype in ("fp16", "bf16", "fp32"):
        return dtype
    return "bf16" if hw.bf16 else "fp16"


def weight_gib(arch: Arch, precision: str) -> float:
    """Weights of the 3-class classifier in GiB: decoder blocks at ``precision``, the input embedding 16-bit
    (bitsandbytes leaves it). A sequence classifier has no LM head: an untied model's published total counts one
    vocab x hidden matrix the classifier never loads, so only one embedding matrix is counted."""
    blocks = arch.total_params() - arch.embedding_params()
    emb = arch.vocab * arch.hidden
    emb_bytes = 4.0 if precision == "fp32" else 2.0
    return (blocks * BYTES_PER_PARAM[precision] + emb * emb_bytes) / 2**30


def activation_gib(arch: Arch, tokens: float, rows: float, seq: float, training: bool, checkpointing: bool,
                   eager: bool = True) -> float:
    """Activations of one batch (``tokens`` tokens in ``rows`` rows of length ``seq``) in GiB: 16-bit hidden
    states plus, for eager attention, the scores of one layer (scores, fp32 softmax, cast back: ~8 bytes each;
    sdpa/flash kernels never hold them)."""
    scores = rows * arch.heads * seq * seq * 8.0 if eager else 0.0
    if not training:  # live at once in a forward without cache: residual, norm, q/k/v/o, gate+up+act
        return (tokens * (4 * arch.hidden + 3 * arch.intermediate) * 2.0 + scores) / 2**30
    per_token_layer = (12 * arch.hidden + 6 * arch.intermediate) * 2.0  # everything a block keeps for its backward
    if checkpointing:  # block inputs of every layer + one block recomputed (fwd+bwd)
        stored = tokens * arch.hidden * 2.0 * arch.layers + 2 * (tokens * per_token_layer + scores)
    else:
        stored = arch.layers * (tokens * per_token_layer + scores)
    return stored / 2**30


def uses_eager(model: ModelConfig) -> bool:
    """Eager attention materialises the scores: explicit, or 'auto' on Gemma2 (softcapping; llm/backbone_config.py)."""
    if model.attn_implementation != "auto":
        return model.attn_implementation == "eager"
    return "gemma" in f"{model.backbone} {(model.random_init or {}).get('model_type', '')}".lower()


def placement(mem_gib: float, hw: Hardware) -> tuple[int, str]:
    """(GPUs working in parallel, description) for a stage needing ``mem_gib`` on one GPU."""
    if mem_gib <= hw.usable_gib:
        return hw.gpus, (f"data-parallel x{hw.gpus}" if hw.gpus > 1 else "one GPU")
    if mem_gib <= hw.usable_gib * hw.gpus:
        # what llm/placement.py does with model.device_map: auto (one process, one GPU computing at a time). FSDP
        # (configs/accelerate/fsdp-qlora.yaml) also splits training state but is not modelled here: a 4-bit model is
        # loaded whole on every GPU before it is sharded (teachers/README.md)
        return 1, f"split over {hw.gpus} GPUs in one process (set model.device_map: auto), no data parallelism"
    return 0, "DOES NOT FIT"


def efficiency(hw_key: str, precision: str, mode: str, calib: dict[tuple[str, str, str], Calibrated]) -> Efficiency:
    """The Efficiency (low/expected/high fraction of peak, with its source) of ``precision`` in ``mode``."""
    lo, hi = CALIBRATED_SPREAD
    hit = calib.get((hw_key, precision, mode))
    if hit is not None:
        return Efficiency(hit.efficiency * lo, hit.efficiency, hit.efficiency * hi, hit.provenance)
    if mode == "train":
        base = efficiency(hw_key, precision, "inference", calib)
        r = TRAIN_EFFICIENCY_RATIO
        return Efficiency(base.low * r, base.expected * r, base.high * r,
                          f"{base.source} x {r} for training (assumption, specs.TRAIN_EFFICIENCY_RATIO)")
    table = HARDWARE[hw_key].efficiency
    if precision == "fp32":
        e = table["fp16"]
        return Efficiency(e.low * FP32_FRACTION, e.expected * FP32_FRACTION, e.high * FP32_FRACTION,
                          f"fp16 figure x {FP32_FRACTION} for fp32 (assumption)")
    return table[precision]


def _transferred(eff: Efficiency, name: str) -> Efficiency:
    """Say so when a figure measured on one model (the public runs and the GPU check use Gemma2-9B) stands for
    another."""
    if name == "gemma2-9b" or not eff.source.startswith(("public", "calibrated")):
        return eff
    return Efficiency(eff.low, eff.expected, eff.high,
                      f"{eff.source}; measured on Gemma2-9B, applied to {name} per FLOP (assumption)")


def forward_flops(arch: Arch, lengths: Lengths, max_length: int, passes: float,
                  which: str = "expected") -> tuple[float, float]:
    """(tokens, FLOPs) of ``passes`` forward passes over every row at ``max_length``."""
    tokens = lengths.tokens(max_length, which) * passes
    linear = 2.0 * arch.block_params() * tokens * PADDING_OVERHEAD
    attention = 4.0 * arch.layers * arch.heads * arch.head_dim * lengths.sum_sq(max_length, which) * passes
    return tokens, linear + attention


def _seconds(flops: dict[str, float], eff: Efficiency, hw: Hardware, n_par: int) -> tuple[float, float, float] | None:
    if not n_par:
        return None
    peak = hw.peak_tflops_fp16 * 1e12 * n_par
    return flops["low"] / (peak * eff.high), flops["expected"] / (peak * eff.expected), flops["high"] / (peak * eff.low)


def estimate_inference(stage: str, name: str, arch: Arch, hw_key: str, *, quantization: str, dtype: str,
                       lengths: Lengths, max_length: int, passes: float, tokens_per_batch: int,
                       max_batch_size: int, calib: dict | None = None, eager: bool = True) -> Estimate:
    hw = HARDWARE[hw_key]
    prec = quantization if quantization != "none" else compute_dtype(dtype, hw)
    flops = {w: forward_flops(arch, lengths, max_length, passes, w)[1] for w in WHICH}
    tokens = forward_flops(arch, lengths, max_length, passes)[0]
    seq = min(max_length, float(lengths.sample.max()) if len(lengths.sample) else max_length)
    notes: list[str] = []

    def mem_at(tpb: float) -> float:
        rows = max(1.0, min(max_batch_size, tpb / max(seq, 1)))
        activations = activation_gib(arch, min(tpb, rows * seq), rows, seq, False, False, eager)
        return weight_gib(arch, prec) + activations + ALLOCATOR_SLACK_GIB

    tpb = float(tokens_per_batch)
    mem = mem_at(tpb)
    while mem > hw.usable_gib and tpb / 2 >= seq and mem_at(seq) <= hw.usable_gib:
        tpb /= 2
        mem = mem_at(tpb)
    if tpb < tokens_per_batch:
        notes.append(f"needs tokens_per_batch <= {int(tpb)} (configured {tokens_per_batch}) "
                     f"to fit {hw.usable_gib:.1f} GiB")
    n_par, where = placement(mem, hw)
    if n_par == 1 and hw.gpus > 1 and mem > hw.usable_gib:
        mem = mem / hw.gpus
    eff = efficiency(hw_key, prec, "inference", calib or {})
    eff = _transferred(eff, name)
    notes.insert(0, f"efficiency {eff.low:.3f}/{eff.expected:.3f}/{eff.high:.3f} of {hw.peak_tflops_fp16:g} TFLOPS; "
                    f"mean {lengths.mean(max_length):.0f} tokens/row at max_length {max_length}")
    if prec == "bf16" and not hw.bf16:
        notes.append(f"{hw.name} has no bf16: compute is emulated (use dtype fp16)")
    sources = [f"throughput: {eff.source}", f"tokens: {lengths.source}",
               f"memory: {hw.memory_source}; peak: {hw.peak_source}"]
    return Estimate(stage, name, prec, hw_key, lengths.rows, passes, tokens, flops["expected"],
                    _seconds(flops, eff, hw, n_par), mem, where, sources, notes)


def estimate_training(stage: str, name: str, arch: Arch, hw_key: str, *, model: ModelConfig, lengths: Lengths,
                      max_length: int, row_passes: float, batch_size: int, optim: str,
                      calib: dict | None = None) -> Estimate:
    hw = HARDWARE[hw_key]
    prec = model.quantization if model.quantization != "none" else compute_dtype(model.dtype, hw)
    factor = TRAIN_FLOPS_FACTOR + (RECOMPUTE_FLOPS_FACTOR if model.gradient_checkpointing else 0.0)
    flops = {w: forward_flops(arch, lengths, max_length, row_passes, w)[1] * factor for w in WHICH}
    tokens = forward_flops(arch, lengths, max_length, row_passes)[0]
    seq = float(min(max_length, lengths.sample.max())) if len(lengths.sample) else float(max_length)
    if model.lora.enabled:
        trainable = arch.lora_params(model.lora.r)
        # fp32 params + grads + Adam moments (8-bit optimizers: 2 B)
        state_bytes = 4 + 4 + (2 if "8bit" in optim else 8)
        frozen = weight_gib(arch, prec)
    else:
        trainable = arch.total_params()
        state_bytes = 2 + 2 + 4 + (2 if "8bit" in optim else 8)
        frozen = 0.0
    mem = (frozen + trainable * state_bytes / 2**30 + ALLOCATOR_SLACK_GIB
           + activation_gib(arch, batch_size * seq, batch_size, seq, True, model.gradient_checkpointing,
                            uses_eager(model)))
    n_par, where = placement(mem, hw)
    eff = _transferred(efficiency(hw_key, prec, "train", calib or {}), name)
    notes = [f"efficiency {eff.low:.3f}/{eff.expected:.3f}/{eff.high:.3f} of {hw.peak_tflops_fp16:g} TFLOPS",
             f"train FLOPs = {factor:g} x forward (assumption, specs.TRAIN_FLOPS_FACTOR)"]
    sources = [f"throughput: {eff.source}", f"tokens: {lengths.source}", f"memory: {hw.memory_source}"]
    return Estimate(stage, name, prec, hw_key, lengths.rows, row_passes, tokens, flops["expected"],
                    _seconds(flops, eff, hw, n_par), mem, where, sources, notes)
