"""The planner's constants: architectures, hardware, throughput anchors — every value with its source.

Architectures — published ``config.json`` values on the Hugging Face hub (google/gemma-2-9b,
google/gemma-2-27b, meta-llama/Meta-Llama-3-8B, meta-llama/Meta-Llama-3-70B; the -it/-Instruct
variants share them); ``params`` = the published parameter count (safetensors total on the model
page). Gemma2 ties the input embedding and the LM head, Llama3 does not.

Hardware — peak dense fp16 tensor-core throughput from the NVIDIA datasheets; usable memory is what
PyTorch can allocate (the card's reported total, less the CUDA context), never the label.

Throughput — the fraction of that peak a long-sequence forward pass reaches (``Efficiency``: low /
expected / high, each with its source). On the T4 they are DERIVED from the public Kaggle runs below
(``PUBLIC_T4_RUNS``: hours for a known workload → FLOP/s → fraction of peak); elsewhere they are
ASSUMPTIONS until ``benchmarks/gpu_check.sh`` measures the card (the planner then prefers the measured
figure and says "calibrated from <file>, <card>, <date>"). Sources of the public runs:
/work/shared/reference/public-facts.md (Kaggle notebook "Inference Gemma-2 9b 4-bit QLoRA" by emiz6413 and
the competition discussions, mirrored in GitHub yukimaru77/kaggle_jp, lmsys-chatbot-arena/).
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

    def forward_flops_per_token(self, seq: float) -> float:
        """Forward FLOPs of one token in a row of ``seq`` tokens: 2 x linear weights + attention
        (QK^T and AV: 4 x layers x heads x head_dim x seq). Embeddings are lookups; the LM head is a 3-way head."""
        return 2.0 * self.block_params() + 4.0 * self.layers * self.heads * self.head_dim * seq


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


# Substrings of a backbone name that identify a table entry (hub ids and local folder names).
ARCH_ALIASES: dict[str, tuple[str, ...]] = {
    "gemma2-9b": ("gemma-2-9b", "gemma2-9b", "gemma2_9b"),
    "gemma2-27b": ("gemma-2-27b", "gemma2-27b", "gemma2_27b"),
    "llama3-8b": ("llama-3-8b", "llama-3.1-8b", "llama3-8b", "llama3.1-8b", "llama-3.2-8b"),
    "llama3-70b": ("llama-3-70b", "llama-3.1-70b", "llama3-70b", "llama-3.3-70b", "llama3.1-70b"),
}

# --------------------------------------------------------------------------- token counts

CHARS_PER_TOKEN = 4.34
CHARS_PER_TOKEN_SOURCE = (
    "measured 2026-11-27 with the Llama-3 tokenizer shipped in PyPI llama-models 0.3.0 (tiktoken BPE, 128k) on the "
    "shared real data mtbench_human.csv + hh_harmless.csv, fields joined as the renderer joins turns: "
    "4,764,819 chars / 1,097,935 tokens (benchmarks/chars_per_token.py); a PROXY for the student's own tokenizer")
CHARS_PER_TOKEN_RANGE = (3.9, 4.7)
"""Assumption around the proxy: (more tokens, fewer tokens). Arena rows carry code and non-English text that
tokenise worse than MT-Bench/HH English (3.9); Gemma-2's 256k vocabulary packs a little more than Llama-3's (4.7)."""

KAGGLE_HIDDEN_CHARS_PER_ROW = 3100.0
KAGGLE_HIDDEN_CHARS_SOURCE = (
    "LMSYS competition data: ~3,100 characters a row (prompt ~54 words + two responses of ~1.38k characters; public "
    "EDA report zjunlp/PredictBeforeExecute da_result_lmsys-chatbot-arena, and issue 13); the hidden test is assumed "
    "to follow train.csv")

# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Efficiency:
    """Fraction of ``Hardware.peak_tflops_fp16`` reached: ``low`` (slowest) / ``expected`` / ``high`` (fastest)."""

    low: float
    expected: float
    high: float
    source: str

    def scaled(self, factor: tuple[float, float, float], source: str) -> "Efficiency":
        return Efficiency(self.expected * factor[0], self.expected * factor[1], self.expected * factor[2], source)


@dataclass(frozen=True)
class PublicRun:
    """A published wall time on Kaggle's 2x T4 for a known workload: the T4 anchors are derived from these."""

    model: str  # key of ARCHS
    precision: str
    rows: int
    chars_per_row: float
    gpus: int
    hours: tuple[float, float, float]  # (fastest, expected, slowest)
    source: str

    def tokens(self) -> float:
        return self.rows * self.chars_per_row / CHARS_PER_TOKEN

    def efficiency(self, peak_tflops: float) -> Efficiency:
        arch = ARCHS[self.model]
        per_token = arch.forward_flops_per_token(self.chars_per_row / CHARS_PER_TOKEN) * PADDING_OVERHEAD
        flop = self.tokens() * per_token
        eff = [flop / (h * 3600 * self.gpus * peak_tflops * 1e12) for h in self.hours]
        return Efficiency(low=eff[2], expected=eff[1], high=eff[0], source=self.source)


PADDING_OVERHEAD = 1.05
"""Assumed: length-sorted, token-budgeted batches pad ~5 % (llm/ targets >= 90 % padding efficiency)."""

T4_PEAK_TFLOPS = 65.0  # NVIDIA T4 datasheet: 65 TFLOPS mixed-precision (fp16) tensor core

PUBLIC_T4_RUNS: dict[str, PublicRun] = {
    "4bit": PublicRun("gemma2-9b", "4bit", 25_000, KAGGLE_HIDDEN_CHARS_PER_ROW, 2, (3.0, 4.0, 5.0),
                      "public run: Gemma2-9B bnb 4-bit, fp16 compute, max 2048, one model per T4, no TTA: ~4 h for the "
                      "hidden test (Kaggle notebook by emiz6413); 3-4 h reported in the discussions; 5 h = +25 % "
                      "margin (assumption)"),
    "8bit": PublicRun("gemma2-9b", "8bit", 25_000, KAGGLE_HIDDEN_CHARS_PER_ROW, 2, (4.0, 4.5, 6.0),
                      "public run: same notebook with bnb 8-bit weights + fp16 activations 'within 4.5 h' "
                      "(author's note); 6 h slowest = bnb int8 reported slower on long inputs (anecdotal; assumption)"),
}


def _t4_efficiency() -> dict[str, Efficiency]:
    four = PUBLIC_T4_RUNS["4bit"].efficiency(T4_PEAK_TFLOPS)
    return {
        "4bit": four,
        "8bit": PUBLIC_T4_RUNS["8bit"].efficiency(T4_PEAK_TFLOPS),
        # No public T4 timing of a 16-bit 8-9B model (18 GB of weights do not fit one T4): 4-bit x (1.0, 1.15, 1.4),
        # i.e. the same GEMMs without the dequantisation.
        "fp16": four.scaled((1.0, 1.15, 1.4), "assumption: bnb 4-bit public run x 1.0-1.4 (no dequantisation); "
                            "no public T4 timing of a 16-bit 9B"),
        # T4 has no bf16: compute falls back to emulation; ~8 h instead of 3-4 h was reported (anecdotal).
        "bf16": four.scaled((0.4, 0.5, 0.6), "public report: ~8 h instead of 3-4 h when Gemma2-9B compute fell "
                            "back to emulated bf16 on T4 (competition discussion; anecdotal)"),
    }


def _assumed(fp16: tuple[float, float, float], q8: tuple[float, float, float],
             q4: tuple[float, float, float]) -> dict[str, Efficiency]:
    src = ("assumption (HF kernels; bitsandbytes int8 decomposition slow on long inputs): "
           "calibrate with benchmarks/gpu_check.sh")
    e16 = Efficiency(*fp16, src)
    return {"fp16": e16, "bf16": e16, "8bit": Efficiency(*q8, src), "4bit": Efficiency(*q4, src)}


@dataclass(frozen=True)
class Hardware:
    name: str
    gpus: int
    label_gb: float  # marketing label per GPU (decimal GB), shown only
    visible_gib: float  # total memory PyTorch reports per GPU
    memory_source: str
    peak_tflops_fp16: float  # dense tensor-core fp16 (= bf16 where supported), per GPU, datasheet
    peak_source: str
    bf16: bool  # datasheet: T4 (Turing) has no bf16
    efficiency: dict[str, Efficiency]
    card_names: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name() that identify this card

    @property
    def usable_gib(self) -> float:
        """What one process can allocate: reported total less the CUDA context (assumption, CUDA_CONTEXT_GIB)."""
        return self.visible_gib - CUDA_CONTEXT_GIB

    @property
    def memory_gib(self) -> float:  # kept for callers that printed the per-GPU memory
        return self.visible_gib


CUDA_CONTEXT_GIB = 0.4
"""Assumed: CUDA context + cuBLAS workspace taken from the reported total before the first tensor (0.3-0.5 GiB)."""

_T4 = _t4_efficiency()
_T4_MEM = "16 GB label (= 14.9 GiB; ECC on): PyTorch reports ~14.7 GiB on Kaggle's T4 (issue 13)"
_T4_PEAK = "NVIDIA T4 datasheet: 65 TFLOPS fp16 tensor"

HARDWARE: dict[str, Hardware] = {
    "t4x2": Hardware("2x T4 (Kaggle)", 2, 16, 14.7, _T4_MEM, T4_PEAK_TFLOPS, _T4_PEAK, False, _T4, ("T4",)),
    "t4x1": Hardware("1x T4", 1, 16, 14.7, _T4_MEM, T4_PEAK_TFLOPS, _T4_PEAK, False, _T4, ("T4",)),
    # L4 datasheet: 242 TFLOPS fp16 with sparsity = 121 dense; 24 GB GDDR6; 72 W (power-capped like the T4).
    "l4": Hardware("1x L4", 1, 24, 22.0, "24 GB label; ~22.0 GiB reported (assumption, not read on a card here)", 121.0,
                   "NVIDIA L4 datasheet: 242 TFLOPS fp16 with sparsity = 121 dense", True,
                   _assumed((0.20, 0.30, 0.40), (0.08, 0.14, 0.20), (0.13, 0.20, 0.28)), ("L4",)),
    "a100-40": Hardware("1x A100 40GB", 1, 40, 39.4, "40 GB label; ~39.4 GiB reported (assumption, not read here)",
                        312.0, "NVIDIA A100 datasheet: 312 TFLOPS bf16/fp16 dense", True,
                        _assumed((0.35, 0.45, 0.55), (0.08, 0.15, 0.25), (0.20, 0.30, 0.40)),
                        ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40")),
    "a100-80": Hardware("1x A100 80GB", 1, 80, 79.1, "80 GB label; ~79.1 GiB reported (assumption, not read here)",
                        312.0, "NVIDIA A100 datasheet: 312 TFLOPS bf16/fp16 dense", True,
                        _assumed((0.35, 0.45, 0.55), (0.08, 0.15, 0.25), (0.20, 0.30, 0.40)),
                        ("A100-SXM4-80GB", "A100 80", "A100-PCIE-80GB")),
    "h100": Hardware("1x H100 80GB", 1, 80, 78.0, "this workplace's lent H100: 'about 78 GiB of GPU memory'", 989.0,
                     "NVIDIA H100 datasheet (SXM): 989 TFLOPS bf16/fp16 dense", True,
                     _assumed((0.25, 0.35, 0.50), (0.04, 0.08, 0.15), (0.12, 0.20, 0.30)), ("H100",)),
    "h200": Hardware("1x H200", 1, 141, 139.0, "this workplace's lent H200: 'about 139 GiB of GPU memory'", 989.0,
                     "NVIDIA H200 datasheet: 989 TFLOPS bf16/fp16 dense (H100's compute, more memory)", True,
                     _assumed((0.25, 0.35, 0.50), (0.04, 0.08, 0.15), (0.12, 0.20, 0.30)), ("H200",)),
}
HARDWARE_ALIASES = {"a100": "a100-80", "t4": "t4x1"}
"""Older names still accepted on the command line."""

TRAIN_EFFICIENCY_RATIO = 0.8
"""Assumed: backward kernels, LoRA side paths and optimizer steps run at 80 % of the forward's efficiency."""

TRAIN_FLOPS_FACTOR = 3.0
"""Forward + backward ≈ 3x forward (backward ≈ 2x). With a frozen LoRA base the weight-gradient GEMMs are
skipped (≈2x), but QLoRA's dequantisation in the backward eats much of that back: 3x is the conservative
textbook figure. Gradient checkpointing adds one more forward (RECOMPUTE_FLOPS_FACTOR)."""

RECOMPUTE_FLOPS_FACTOR = 1.0

BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "8bit": 1.0, "4bit": 0.53}
"""Weight bytes by precision; 4bit = NF4 0.5 B + double-quantised absmax (~0.03 B). bitsandbytes leaves the
embeddings in 16-bit, which the planner counts separately."""

KAGGLE_LIMIT_H = 9.0
"""Kaggle's notebook limit for this competition (code competition rules)."""

KAGGLE_TRAIN_ROWS = 57_477
"""Rows of the competition's train.csv, used when the training file cannot be read."""

KAGGLE_TEST_ROWS = 25_000
"""Approximate rows of the hidden test set (competition data page: '~25,000 rows'); the public test.csv has 3."""

