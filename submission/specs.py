"""The planner's constants: architectures (one table) and hardware (one table), each value with its source.

Architectures — published ``config.json`` values on the Hugging Face hub (google/gemma-2-9b,
google/gemma-2-27b, meta-llama/Meta-Llama-3-8B, meta-llama/Meta-Llama-3-70B; the -it/-Instruct
variants share them); ``params`` = the published parameter count (safetensors total on the model
page). Gemma2 ties the input embedding and the LM head, Llama3 does not.

Hardware — peak dense tensor-core throughput, memory and bandwidth per GPU from the NVIDIA
datasheets (T4: "NVIDIA T4 Tensor Core GPU datasheet"; A100: "NVIDIA A100 Tensor Core GPU
datasheet", SXM 80 GB; H100: "NVIDIA H100 Tensor Core GPU datasheet", SXM). ``efficiency`` is the
fraction of the fp16/bf16 peak a long-sequence forward pass achieves with the given weight
precision: ASSUMED, not measured here — calibrate with ``benchmarks/gpu_throughput.py`` (the
planner reads ``benchmarks/gpu_results.json`` when it exists and prefers its figures).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: float | None  # published total; None = computed (configs that are not in the table)
    tied_embeddings: bool

    def embedding_params(self) -> float:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def layer_linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer in one decoder block: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def block_params(self) -> float:
        """Linear weights of all decoder blocks (norms are negligible): the FLOP-carrying parameters."""
        return self.layers * sum(a * b for a, b in self.layer_linear_shapes())

    def computed_params(self) -> float:
        return self.block_params() + self.embedding_params()

    def total_params(self) -> float:
        return self.params if self.params is not None else self.computed_params()

    def lora_params(self, r: int) -> float:
        """Trainable LoRA parameters with adapters on every linear layer (target_modules=all-linear)."""
        return self.layers * sum(r * (a + b) for a, b in self.layer_linear_shapes())


# One table. Source of every number: the model's published config.json / model page (see module docstring).
ARCHS: dict[str, Arch] = {
    "gemma2-9b": Arch(layers=42, hidden=3584, heads=16, kv_heads=8, head_dim=256, intermediate=14336, vocab=256000,
                      params=9_241_705_984, tied_embeddings=True),
    "gemma2-27b": Arch(layers=46, hidden=4608, heads=32, kv_heads=16, head_dim=128, intermediate=36864, vocab=256000,
                       params=27_227_128_320, tied_embeddings=True),
    "llama3-8b": Arch(layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=128256,
                      params=8_030_261_248, tied_embeddings=False),
    "llama3-70b": Arch(layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128, intermediate=28672, vocab=128256,
                       params=70_553_706_496, tied_embeddings=False),
}

# Substrings of a backbone name that identify a table entry (hub ids and local folder names).
ARCH_ALIASES: dict[str, tuple[str, ...]] = {
    "gemma2-9b": ("gemma-2-9b", "gemma2-9b", "gemma2_9b"),
    "gemma2-27b": ("gemma-2-27b", "gemma2-27b", "gemma2_27b"),
    "llama3-8b": ("llama-3-8b", "llama-3.1-8b", "llama3-8b", "llama3.1-8b", "llama-3.2-8b"),
    "llama3-70b": ("llama-3-70b", "llama-3.1-70b", "llama3-70b", "llama-3.3-70b", "llama3.1-70b"),
}


@dataclass(frozen=True)
class Hardware:
    name: str
    gpus: int
    memory_gib: float  # per GPU, datasheet
    usable_fraction: float  # assumed: CUDA context, allocator fragmentation, ECC
    bandwidth_gbs: float  # per GPU, datasheet
    peak_tflops_fp16: float  # dense tensor-core fp16 (= bf16 where supported), datasheet
    peak_tops_int8: float  # dense int8 tensor-core, datasheet (shown for reference; bitsandbytes 8-bit does not reach it)
    bf16: bool  # datasheet: T4 (Turing) has no bf16
    efficiency: dict[str, float]  # ASSUMED fraction of peak_tflops_fp16 by weight precision (see module docstring)

    @property
    def usable_gib(self) -> float:
        return self.memory_gib * self.usable_fraction


HARDWARE: dict[str, Hardware] = {
    # NVIDIA T4 datasheet: 65 TFLOPS fp16 tensor, 130 TOPS int8, 16 GB GDDR6, 320 GB/s, 70 W.
    # Efficiencies assumed: the 70 W cap holds large fp16 GEMMs to roughly 40-50 % of peak; bitsandbytes
    # int8 (outlier decomposition) and NF4 (dequantise + fp16 GEMM) lose a little more on top.
    "t4x2": Hardware("2x T4 (Kaggle)", 2, 16.0, 0.94, 320.0, 65.0, 130.0, False,
                     {"fp16": 0.45, "bf16": 0.45, "8bit": 0.40, "4bit": 0.40}),
    # NVIDIA A100 datasheet (SXM 80 GB): 312 TFLOPS bf16/fp16 dense, 624 TOPS int8, 2039 GB/s.
    # Efficiencies assumed (eager attention, HF modelling code, bitsandbytes kernels).
    "a100": Hardware("1x A100 80GB", 1, 80.0, 0.97, 2039.0, 312.0, 624.0, True,
                     {"fp16": 0.50, "bf16": 0.50, "8bit": 0.30, "4bit": 0.40}),
    # NVIDIA H100 datasheet (SXM): 989 TFLOPS bf16/fp16 dense, 1979 TOPS int8, 80 GB HBM3, 3350 GB/s.
    # Efficiencies assumed lower than A100's: the same kernels leave more of Hopper's peak unused.
    "h100": Hardware("1x H100 80GB", 1, 80.0, 0.97, 3350.0, 989.0, 1979.0, True,
                     {"fp16": 0.40, "bf16": 0.40, "8bit": 0.20, "4bit": 0.30}),
}

TRAIN_EFFICIENCY_RATIO = 0.8
"""Assumed: backward kernels, LoRA side paths and optimizer steps run at 80 % of the forward's efficiency."""

TRAIN_FLOPS_FACTOR = 3.0
"""Forward + backward ≈ 3x forward (backward ≈ 2x). With a frozen LoRA base the weight-gradient GEMMs are
skipped (≈2x), but QLoRA's dequantisation in the backward eats much of that back: 3x is the conservative
textbook figure. Gradient checkpointing adds one more forward (RECOMPUTE_FLOPS_FACTOR)."""

RECOMPUTE_FLOPS_FACTOR = 1.0

PADDING_OVERHEAD = 1.05
"""Assumed: length-sorted, token-budgeted batches pad ~5 % (llm/ targets >= 90 % padding efficiency)."""

BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "8bit": 1.0, "4bit": 0.53}
"""Weight bytes by precision; 4bit = NF4 0.5 B + double-quantised absmax (~0.03 B). bitsandbytes leaves the
embeddings in 16-bit, which the planner counts separately."""

KAGGLE_LIMIT_H = 9.0
"""Kaggle's notebook limit for this competition (code competition rules)."""

KAGGLE_TRAIN_ROWS = 57_477
"""Rows of the competition's train.csv, used when the training file cannot be read."""

KAGGLE_TEST_ROWS = 25_000
"""Approximate rows of the hidden test set (competition data page: '~25,000 rows'); the public test.csv has 3."""
