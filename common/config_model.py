"""Config sections of the model engine (llm/, kfold/): how a pair is rendered, which backbone and LoRA, how a
model is trained and how it predicts. Every teacher and the student carry these sections; the stages' own sections
are in :mod:`arena_kd.common.config_stages`, the root and the loading in :mod:`arena_kd.common.config`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are refused, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class RenderConfig(Section):
    """How a pair becomes model input (see data/render.py)."""

    max_length: int = Field(1024, ge=16, le=32768,
                            description="Token budget for one rendered pair (including special tokens).")
    truncation: Literal["budget", "left", "keep_last_turns"] = Field(
        "budget",
        description="budget: per-field budgets, prompt capped first, longer response trimmed first; "
        "left: drop the oldest tokens of every field; keep_last_turns: keep the most recent turns that fit.",
    )
    prompt_fraction: float = Field(0.2, gt=0, lt=1,
                                   description="Cap of the prompt's share of the budget under `budget` truncation.")
    template: Literal["blocks", "chat"] = Field(
        "blocks",
        description="blocks: '<prompt>: ... <response_a>: ... <response_b>: ...' (1st-place layout) wrapped in the "
        "tokenizer's special tokens; "
        "chat: the same blocks as one user message of the tokenizer's chat template (generation prompt included).")


class LoraConfig(Section):
    enabled: bool = Field(True, description="Train LoRA adapters (false = full fine-tuning; only sensible for small "
                          "models).")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank. Higher = more capacity and memory; 1st place used 64.")
    alpha: int = Field(32, ge=1, le=4096,
                       description="LoRA scaling numerator (effective scale alpha/r). 1st place: 128 with r=64.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters; 'all-linear' = every attention and MLP projection."
    )
    top_layers: int | None = Field(
        None, ge=1, le=1024,
        description="Adapters only in the last N transformer layers (null = all). Backward then stops at layer L-N: "
        "much cheaper training (CPU demo), less capacity.",
    )


PLACEMENT_FIELDS = frozenset({"device_map", "max_memory"})
"""ModelConfig fields that say where the weights live, not what they compute: left out of every resume hash, so moving
a run to other hardware keeps its finished folds and checkpoints."""
# model fields added after runs were made: at their defaults they compute what those runs computed, so the stages'
# resume hashes leave them out (``model_hash_view``) and finished teachers and students stay valid
ADDED_MODEL_FIELDS = ("answer_pooling",)


def without_added_defaults(dumped: dict, section_cls, keys) -> dict:
    """``dumped`` (a section's model_dump, changed in place and returned) without those of ``keys`` that sit at
    ``section_cls``'s defaults: fields added after runs were made, left out of resume hashes while they change
    nothing."""
    for key in keys:
        if key in dumped and dumped[key] == section_cls.model_fields[key].default:
            dumped.pop(key)
    return dumped


def model_hash_view(model_section: dict) -> dict:
    """A dumped model section without the ``ADDED_MODEL_FIELDS`` that are at their defaults (in place; returned)."""
    return without_added_defaults(model_section, ModelConfig, ADDED_MODEL_FIELDS)


class ModelConfig(Section):
    """A backbone turned into a 3-class preference classifier (llm/)."""

    backbone: str = Field(description="Local folder, hub id, 'pkg://<package>/<subdir>' inside an installed package, "
                          "or 'random' (built from `random_init`).")
    revision: str | None = Field(None, description="Hub revision / commit pinned for reproducibility.")
    gguf_file: str | None = Field(None, description="GGUF file inside `backbone` (or a 'pkg://' path) to dequantise "
                                  "and load.")
    tokenizer: str | None = Field(None, description="Tokenizer source if not the backbone's; 'bpe:<vocab>' trains a "
                                  "byte-level BPE on the training texts (tests).")
    random_init: dict[str, Any] | None = Field(None, description="HF config kwargs (with model_type) for a randomly "
                                               "initialised backbone; used when backbone='random'.")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp16 otherwise (T4), fp32 on CPU.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="bitsandbytes base quantization. 4bit = NF4 double-quant (QLoRA training; ~1/4 of the "
        "fp16 weights); 8bit = LLM.int8, closer to the 16-bit weights but reported slower than 4-bit or fp16 on long "
        "inputs (public-facts: bitsandbytes int8 reports).")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="auto: eager for Gemma2 (softcapping), sdpa otherwise.")
    disable_softcapping: bool = Field(False, description="Gemma2: turn attention logit softcapping off (3rd place "
                                      "gained from it).")
    num_layers: int | None = Field(
        None, ge=1, le=1024,
        description="Keep only the first N transformer layers of the backbone (layer-pruned student: faster, weaker); "
        "null = all.",
    )
    gradient_checkpointing: bool = Field(True, description="Trade ~30% compute for much less activation memory.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    head_init_std: float = Field(
        0.02, ge=0, le=1, description="Std of the re-initialised 3-way classification head; 0 = a zero head (the "
        "model starts at the uniform prediction). Which is right depends on the final hidden state's norm, measured "
        "on 16 sample rows: Gemma 3 270M's is ~108, so std 0.02 starts it at logit std 2.1 and cross-entropy 2.96 "
        "(learning curve, 979 rows: zero head 0.866 vs 0.905 with std 0.02); MiniLM's is ~5.8, and with a zero head "
        "the body gets no gradient at the first step and its predictions stayed constant (0.925 vs 0.909). Keep 0.02 "
        "for small-norm encoders, 0 for decoders with large final norms.")
    answer_pooling: bool = Field(
        False, description="The classification head also reads mean(h[answer A]) − mean(h[answer B]) of the final "
        "hidden states (llm.answer_pooling): no new weights, one forward pass. Measured on the demo student's own "
        "frozen input (3 MiniLM layers, 96 tokens; benchmarks/linear_probe.py --input cross): a linear probe on the "
        "token the head reads ranks no rows; on the answers' own tokens it ranks both sources' rows. Costs a few "
        "element-wise ops per batch; the flag is saved in the model's config.json, so exports pool the same way.")
    freeze_embeddings: bool = Field(
        False, description="Full fine-tuning (lora.enabled: false) leaves the input token embedding frozen. Gemma 3 "
        "270M: ~168M of its 268M parameters are the 262k-token embedding, which a few thousand pairs cannot train but "
        "whose gradient and AdamW state cost memory and time; with LoRA the embedding is frozen anyway.")
    device_map: Literal["single", "auto"] = Field(
        "single",
        description="single: the whole model on this process's device (one GPU per process under accelerate/torchrun; "
        "data parallel or FSDP by the launch config). auto: one process spreads the layers over every visible GPU "
        "(then CPU) with accelerate's device_map='auto', for a teacher bigger than one card; only one GPU computes "
        "at a time (slow), and it is refused under a multi-process launch (accelerate cannot train or shard such a "
        "model).",
    )
    max_memory: dict[str, str] | None = Field(
        None,
        description="With device_map=auto: memory cap per device, e.g. {'0': '70GiB', '1': '70GiB', 'cpu': '200GiB'} "
        "(GPU index or 'cpu' -> size). Leave headroom for activations: the caps bound the weights only. "
        "null = accelerate's default (~90% of each GPU).",
    )

    @model_validator(mode="after")
    def _placement(self) -> "ModelConfig":
        if self.max_memory is not None and self.device_map != "auto":
            raise ValueError("max_memory is only used with device_map: auto")
        for key in self.max_memory or {}:
            if not (key.isdigit() or key in ("cpu", "disk")):
                raise ValueError(f"max_memory key '{key}' must be a GPU index ('0', '1', ...) or 'cpu'")
        return self


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0, le=100, description="Passes over the training rows.")
    max_steps: int = Field(-1, ge=-1, description="Stop after N optimizer steps (-1 = use epochs).")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak LR (cosine schedule). ~1e-5 for 70B teachers, "
                                 "~5e-5..2e-4 for 9B LoRA.")
    head_learning_rate: float | None = Field(
        None, gt=0, le=1, description="Peak LR of the freshly initialised 3-class head (its own optimizer group, same "
        "schedule); null = learning_rate. A head drawn from scratch on a pretrained body can take a larger step than "
        "the body: with few optimizer steps (demo scale) the body's LR leaves the head near its uniform start.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warm-up fraction of steps.")
    batch_size: int = Field(4, ge=1, le=1024, description="Rows per device per micro-batch.")
    grad_accum: int = Field(4, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_length: int | None = Field(None, ge=16, le=32768, description="Training token budget; null = "
                                   "render.max_length. 1st place: ~1024 train.")
    swap_augmentation: Literal["none", "random", "both"] = Field(
        "both", description="none; random: each row swapped with p=0.5; both: both orientations in the same step "
        "(+0.003 reported)."
    )
    eval_steps: int = Field(0, ge=0, description="Trainer evaluation on the held-out fold every N steps (0 = none: the "
                            "fold is predicted with TTA after training anyway).")
    logging_steps: int = Field(10, ge=1, description="Log metrics every N steps.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps for resume (0 = no intermediate "
                            "checkpoints).")
    group_by_length: bool = Field(True, description="Length-grouped batches: less padding, faster.")
    report_to: list[str] = Field(default_factory=list, description="Extra trackers for HF Trainer (e.g. ['wandb']); "
                                 "metrics always go to JSONL under workdir.")
    optim: str = Field("adamw_torch", description="HF Trainer optimizer name (e.g. paged_adamw_8bit on GPU).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    autocast: Literal["none", "bf16"] = Field(
        "none", description="bf16: matmuls under bf16 autocast while the weights and optimizer state stay in the "
        "model's dtype (fp32 on CPU). On a CPU with AVX-512 BF16 (or a GPU with native bf16) the GEMMs run ~2x "
        "faster; the loss sees bf16 rounding (benchmarks/learning_curve.py measures speed and log loss). none: "
        "the model's dtype throughout.")


class PredictConfig(Section):
    max_length: int | None = Field(None, ge=16, le=32768, description="Inference token budget; null = "
                                   "render.max_length. 1st place: ~2000 at inference.")
    tokens_per_batch: int = Field(8192, ge=16, description="Token budget of one inference batch (rows are sorted by "
                                  "length).")
    max_batch_size: int = Field(64, ge=1, description="Upper bound on rows per inference batch.")
    tta: bool = Field(True, description="A/B-swap test-time augmentation: doubles inference cost, removes position "
                      "bias.")
    autocast: Literal["none", "bf16"] = Field(
        "none", description="bf16: the k-fold stages predict under bf16 autocast (fp32 weights): faster GEMMs on a CPU "
        "with AVX-512 BF16 / AMX or a bf16 GPU, logits with bf16 rounding (benchmarks/learning_curve.py measures "
        "both). none: the model's dtype.")
