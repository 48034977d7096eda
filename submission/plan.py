"""`arena-kd plan`: wall time and GPU memory of every stage of a config, before spending GPU hours.

Cost model (per stage, on one hardware profile from :mod:`submission.specs`):
  forward FLOPs = 2 x block_params x tokens x PADDING_OVERHEAD           (linear layers; embeddings are lookups,
                  + 4 x layers x heads x head_dim x sum(n_row^2)           the LM head is replaced by a 3-way head)
  training      = (TRAIN_FLOPS_FACTOR [+ RECOMPUTE_FLOPS_FACTOR with gradient checkpointing]) x forward
  seconds       = FLOPs / (peak_fp16 x efficiency[precision] x data-parallel GPUs)
Memory per GPU = weights (blocks at the weight precision + 16-bit embeddings) + activations of one batch
(+ eager attention scores; + LoRA params, grads and optimizer state when training).

Token counts come from the test set (and the training set for the training stages), tokenised with the
student's tokenizer when it is available locally, else estimated as characters / 4 — the output says which.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.config import ModelConfig, PipelineConfig
from arena_kd.errors import UserError
from submission.budget import format_seconds, parse_time_budget
from submission.specs import (
    ARCH_ALIASES, ARCHS, BYTES_PER_PARAM, HARDWARE, KAGGLE_LIMIT_H, KAGGLE_TEST_ROWS, KAGGLE_TRAIN_ROWS,
    PADDING_OVERHEAD, RECOMPUTE_FLOPS_FACTOR, TRAIN_EFFICIENCY_RATIO, TRAIN_FLOPS_FACTOR, Arch, Hardware,
)

log = logging.getLogger("arena_kd.submission")

GPU_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_results.json"
SAMPLE_ROWS = 4000
"""Rows tokenised to measure a file's length distribution (scaled to the full row count)."""
TEMPLATE_TOKENS = 16
"""Headers and special tokens the renderer adds around the three fields (data/render.py)."""
LOAD_GIB_PER_S = 0.15
"""Assumed: reading the export from a Kaggle dataset and quantising it while loading, GiB of export per second
(one copy per GPU, loaded one after the other)."""
STACKER_S_PER_ROW = {"features": 0.005, "embeddings": 0.024}
"""Assumed seconds per test row of the stacker pass: TF-IDF/length features on CPU; MiniLM embeddings on a T4
(~10 min for 25k rows, per configs/kaggle-gemma2.yaml)."""


# --------------------------------------------------------------------------- token counts


@dataclass
class Lengths:
    """Natural (uncapped) rendered lengths of a sample of rows, standing for ``rows`` rows."""

    sample: np.ndarray
    rows: int
    source: str

    def capped(self, max_length: int) -> np.ndarray:
        return np.minimum(self.sample, max_length)

    def tokens(self, max_length: int) -> float:
        return float(self.capped(max_length).sum()) * self.rows / max(len(self.sample), 1)

    def sum_sq(self, max_length: int) -> float:
        c = self.capped(max_length).astype(np.float64)
        return float((c * c).sum()) * self.rows / max(len(self.sample), 1)

    def mean(self, max_length: int) -> float:
        return float(self.capped(max_length).mean()) if len(self.sample) else 0.0


def _local_tokenizer(cfg: PipelineConfig):
    """(tokenizer, description) from the student export or a local student tokenizer/backbone; (None, why) otherwise."""
    from arena_kd.io import resolve_path

    candidates = []
    export = Path(cfg.submission.student_dir) if cfg.submission.student_dir else cfg.workdir_path / "student" / "export"
    candidates += [export / "tokenizer", export]
    m = cfg.student.model
    for spec in (m.tokenizer, m.backbone):
        if spec and not spec.startswith("bpe:") and spec != "random":
            try:
                candidates.append(Path(resolve_path(spec)))
            except UserError:
                pass
    for c in candidates:
        if c.is_dir() and any((c / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            try:
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(str(c), local_files_only=True), f"student tokenizer ({c})"
            except Exception as exc:  # noqa: BLE001
                log.info("tokenizer at %s not usable (%s)", c, exc)
    return None, "characters / 4 estimate (no local student tokenizer)"


def natural_lengths(df: pd.DataFrame, tokenizer) -> np.ndarray:
    """int64[n]: tokens of prompt + both responses (all turns) + the template, uncapped."""
    fields = ["\n\n".join(x for x in (t or []) if isinstance(x, str)) for col in ("prompt", "response_a", "response_b") for t in df[col]]
    n = len(df)
    if tokenizer is None:
        per = np.fromiter((len(s) for s in fields), dtype=np.int64, count=len(fields))
        per = np.ceil(per / 4.0).astype(np.int64)
    else:
        ids = tokenizer(fields, add_special_tokens=False)["input_ids"]
        per = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return per.reshape(3, n).sum(axis=0) + TEMPLATE_TOKENS


def _sample(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    return df if len(df) <= SAMPLE_ROWS else df.sample(n=SAMPLE_ROWS, random_state=seed)


def _try_read(path: str | None) -> pd.DataFrame | None:
    if not path or not Path(path).is_file():
        return None
    from data.readers import read_pairs

    return read_pairs(path)


# --------------------------------------------------------------------------- architectures


def resolve_arch(model: ModelConfig) -> tuple[str, Arch | None, str]:
    """(name, Arch or None, source) for a model section: the table, a random_init dict, or a local config.json."""
    from arena_kd.io import resolve_path

    name = model.backbone.lower()
    for key, aliases in ARCH_ALIASES.items():
        if any(a in name for a in aliases):
            return key, ARCHS[key], "published config.json (table in submission/specs.py)"
    cfg: dict[str, Any] | None = None
    source = ""
    if model.backbone == "random" and model.random_init:
        cfg, source = dict(model.random_init), "random_init in the config"
    else:
        try:
            folder = Path(resolve_path(model.backbone))
            if (folder / "config.json").is_file():
                cfg, source = json.loads((folder / "config.json").read_text()), f"{folder}/config.json"
        except UserError:
            pass
    if not cfg or "hidden_size" not in cfg:
        return model.backbone, None, "unknown architecture (not in the table, no local config.json)"
    heads = int(cfg.get("num_attention_heads", 1))
    hidden = int(cfg["hidden_size"])
    arch = Arch(
        layers=int(cfg.get("num_hidden_layers", 1)), hidden=hidden, heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads", heads)), head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate=int(cfg.get("intermediate_size", 4 * hidden)), vocab=int(cfg.get("vocab_size", 32000)),
        params=None, tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )
    display = model.backbone.removeprefix("pkg://")
    return display, arch, source


# --------------------------------------------------------------------------- hardware calibration


def load_calibration(path: Path = GPU_RESULTS) -> dict[tuple[str, str, str], float]:
    """{(hardware, precision, 'inference'|'train'): efficiency} from benchmarks/gpu_results.json, if present.

    Expected records (a list, or {"results": [...]}) as written by benchmarks/gpu_throughput.py:
    {"gpu": "<device name>", "model": "gemma2-9b", "precision": "8bit", "mode": "inference"|"train",
     "max_length": 1024, "tokens_per_s": 1234.5}. Efficiency = achieved FLOP/s per GPU / datasheet peak.
    """
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s unreadable (%s); using assumed efficiencies", path, exc)
        return {}
    records = data.get("results", []) if isinstance(data, dict) else data
    found: dict[tuple[str, str, str], list[float]] = {}
    for r in records if isinstance(records, list) else []:
        try:
            gpu = str(r["gpu"]).upper()
            hw = "t4x2" if "T4" in gpu else "a100" if "A100" in gpu else "h100" if "H100" in gpu else None
            arch_key = next((k for k, al in ARCH_ALIASES.items() if k == r["model"] or any(a in str(r["model"]).lower() for a in al)), None)
            if hw is None or arch_key is None:
                continue
            arch, mode, prec = ARCHS[arch_key], str(r.get("mode", "inference")), str(r["precision"])
            n = float(r.get("max_length", 1024))
            per_token = 2 * arch.block_params() + 4 * arch.layers * arch.heads * arch.head_dim * n
            if mode == "train":
                per_token *= TRAIN_FLOPS_FACTOR + (RECOMPUTE_FLOPS_FACTOR if r.get("gradient_checkpointing", True) else 0)
            eff = float(r["tokens_per_s"]) * per_token / (HARDWARE[hw].peak_tflops_fp16 * 1e12)
            if 0 < eff < 1.5:
                found.setdefault((hw, prec, mode), []).append(eff)
        except (KeyError, TypeError, ValueError):
            continue
    return {k: float(np.median(v)) for k, v in found.items()}


# --------------------------------------------------------------------------- estimates


@dataclass
class Estimate:
    stage: str
    model: str
    precision: str
    rows: float
    passes: float
    tokens: float
    flops: float
    seconds: float | None
    mem_gib: float | None
    placement: str
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "model": self.model, "weights": self.precision,
            "rows x passes": f"{self.rows:,.0f} x {self.passes:g}", "Mtokens": f"{self.tokens / 1e6:,.1f}",
            "PFLOP": f"{self.flops / 1e15:,.1f}", "time": format_seconds(self.seconds) if self.seconds is not None else "n/a",
            "GiB/GPU": f"{self.mem_gib:.1f}" if self.mem_gib is not None else "n/a", "placement": self.placement,
        }


def compute_dtype(dtype: str, hw: Hardware) -> str:
    if dtype in ("fp16", "bf16", "fp32"):
        return dtype
    return "bf16" if hw.bf16 else "fp16"


def weight_gib(arch: Arch, precision: str) -> float:
    """Weights in GiB: decoder blocks at ``precision``, embeddings 16-bit (bitsandbytes leaves them)."""
    blocks = arch.total_params() - arch.embedding_params()
    emb_bytes = 4.0 if precision == "fp32" else 2.0
    return (blocks * BYTES_PER_PARAM[precision] + arch.embedding_params() * emb_bytes) / 2**30


def activation_gib(arch: Arch, tokens: float, rows: float, seq: float, training: bool, checkpointing: bool) -> float:
    """Activations of one batch (``tokens`` tokens in ``rows`` rows of length ``seq``) in GiB: 16-bit hidden
    states plus eager attention scores (scores, fp32 softmax, cast back: ~8 bytes per score) of one layer."""
    scores = rows * arch.heads * seq * seq * 8.0
    if not training:  # live at once in a forward without cache: residual, norm, q/k/v/o, gate+up+act
        return (tokens * (4 * arch.hidden + 3 * arch.intermediate) * 2.0 + scores) / 2**30
    per_token_layer = (12 * arch.hidden + 6 * arch.intermediate) * 2.0  # everything a block keeps for its backward
    if checkpointing:  # block inputs of every layer + one block recomputed (fwd+bwd)
        stored = tokens * arch.hidden * 2.0 * arch.layers + 2 * (tokens * per_token_layer + scores)
    else:
        stored = arch.layers * (tokens * per_token_layer + scores)
    return stored / 2**30


def _placement(mem: float, hw: Hardware) -> tuple[int, str]:
    if mem <= hw.usable_gib:
        return hw.gpus, (f"data-parallel x{hw.gpus}" if hw.gpus > 1 else "one GPU")
    if mem <= hw.usable_gib * hw.gpus:
        return 1, f"split over {hw.gpus} GPUs (device_map), no data parallelism"
    return 0, "DOES NOT FIT"


def _efficiency(hw_key: str, precision: str, mode: str, calib: dict) -> tuple[float, str]:
    if (hw_key, precision, mode) in calib:
        return calib[(hw_key, precision, mode)], "calibrated (benchmarks/gpu_results.json)"
    base = calib.get((hw_key, precision, "inference"))
    if mode == "train" and base is not None:
        return base * TRAIN_EFFICIENCY_RATIO, "calibrated inference x assumed train ratio"
    eff = HARDWARE[hw_key].efficiency[precision if precision in HARDWARE[hw_key].efficiency else "fp16"]
    return (eff * TRAIN_EFFICIENCY_RATIO if mode == "train" else eff), "assumed (submission/specs.py)"


def forward_flops(arch: Arch, lengths: Lengths, max_length: int, passes: float) -> tuple[float, float]:
    """(tokens, FLOPs) of ``passes`` forward passes over every row at ``max_length``."""
    tokens = lengths.tokens(max_length) * passes
    linear = 2.0 * arch.block_params() * tokens * PADDING_OVERHEAD
    attention = 4.0 * arch.layers * arch.heads * arch.head_dim * lengths.sum_sq(max_length) * passes
    return tokens, linear + attention


def estimate_inference(stage: str, name: str, arch: Arch, hw_key: str, *, quantization: str, dtype: str,
                       lengths: Lengths, max_length: int, passes: float, tokens_per_batch: int,
                       max_batch_size: int, calib: dict | None = None) -> Estimate:
    hw = HARDWARE[hw_key]
    prec = quantization if quantization != "none" else compute_dtype(dtype, hw)
    tokens, flops = forward_flops(arch, lengths, max_length, passes)
    seq = min(max_length, float(np.max(lengths.sample)) if len(lengths.sample) else max_length)
    notes: list[str] = []

    def mem_at(tpb: float) -> float:
        rows = max(1.0, min(max_batch_size, tpb / max(seq, 1)))
        return weight_gib(arch, prec) + activation_gib(arch, min(tpb, rows * seq), rows, seq, False, False) + 0.5

    tpb = float(tokens_per_batch)
    mem = mem_at(tpb)
    while mem > hw.usable_gib and tpb / 2 >= seq and mem_at(seq) <= hw.usable_gib:
        tpb /= 2
        mem = mem_at(tpb)
    if tpb < tokens_per_batch:
        notes.append(f"needs tokens_per_batch <= {int(tpb)} (configured {tokens_per_batch}) to fit {hw.usable_gib:.1f} GiB")
    n_par, placement = _placement(mem, hw)
    if n_par == 1 and hw.gpus > 1 and mem > hw.usable_gib:
        mem = mem / hw.gpus
    eff, eff_src = _efficiency(hw_key, prec, "inference", calib or {})
    seconds = flops / (hw.peak_tflops_fp16 * 1e12 * eff * n_par) if n_par else None
    notes.insert(0, f"efficiency {eff:.2f} {eff_src}; mean {lengths.mean(max_length):.0f} tokens/row at max_length {max_length}")
    if prec == "bf16" and not hw.bf16:
        notes.append(f"{hw.name} has no bf16")
    return Estimate(stage, name, prec, lengths.rows, passes, tokens, flops, seconds, mem, placement, notes)


def estimate_training(stage: str, name: str, arch: Arch, hw_key: str, *, model: ModelConfig, lengths: Lengths,
                      max_length: int, row_passes: float, batch_size: int, optim: str,
                      calib: dict | None = None) -> Estimate:
    hw = HARDWARE[hw_key]
    prec = model.quantization if model.quantization != "none" else compute_dtype(model.dtype, hw)
    tokens, fwd = forward_flops(arch, lengths, max_length, row_passes)
    factor = TRAIN_FLOPS_FACTOR + (RECOMPUTE_FLOPS_FACTOR if model.gradient_checkpointing else 0.0)
    flops = fwd * factor
    seq = float(min(max_length, np.max(lengths.sample))) if len(lengths.sample) else float(max_length)
    if model.lora.enabled:
        trainable = arch.lora_params(model.lora.r)
        state_bytes = 4 + 4 + (2 if "8bit" in optim else 8)  # fp32 params + grads + Adam moments (8-bit optimizers: 2 B)
        frozen = weight_gib(arch, prec)
    else:
        trainable = arch.total_params()
        state_bytes = 2 + 2 + 4 + (2 if "8bit" in optim else 8)
        frozen = 0.0
    mem = frozen + trainable * state_bytes / 2**30 + activation_gib(arch, batch_size * seq, batch_size, seq, True, model.gradient_checkpointing) + 0.5
    n_par, placement = _placement(mem, hw)
    eff, eff_src = _efficiency(hw_key, prec, "train", calib or {})
    seconds = flops / (hw.peak_tflops_fp16 * 1e12 * eff * n_par) if n_par else None
    notes = [f"efficiency {eff:.2f} {eff_src}", f"train FLOPs = {factor:g} x forward"]
    return Estimate(stage, name, prec, lengths.rows, row_passes, tokens, flops, seconds, mem, placement, notes)


# --------------------------------------------------------------------------- the plan


@dataclass
class PlanResult:
    hardware: str
    estimates: list[Estimate]
    submission_t4_s: float | None
    fits_kaggle: bool | None
    token_source: str
    suggestions: list[str]
    notes: list[str]
    overhead_s: tuple[float, float] = (0.0, 0.0)  # (load, stacker) seconds of the Kaggle submission

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([e.row() for e in self.estimates])


def _submission_estimate(cfg: PipelineConfig, arch: Arch, name: str, hw_key: str, lengths: Lengths, calib: dict, **change) -> Estimate:
    sub = cfg.submission
    p = sub.predict
    max_length = change.get("max_length") or p.max_length or cfg.student.predict.max_length or cfg.render.max_length
    tta = change.get("tta", p.tta)
    return estimate_inference("submission (student)", name, arch, hw_key, quantization=change.get("quantization", sub.quantization),
                              dtype=sub.dtype, lengths=lengths, max_length=max_length, passes=2 if tta else 1,
                              tokens_per_batch=p.tokens_per_batch, max_batch_size=p.max_batch_size, calib=calib)


def _submission_overhead(cfg: PipelineConfig, arch: Arch, rows: float, hw_key: str = "t4x2") -> tuple[float, float]:
    """(load seconds, stacker seconds) of a submission run, from the assumed rates above."""
    export_gib = weight_gib(arch, cfg.student.export_dtype)
    load = HARDWARE[hw_key].gpus * export_gib / LOAD_GIB_PER_S
    stacker = rows * (STACKER_S_PER_ROW["features"] + (STACKER_S_PER_ROW["embeddings"] if cfg.stacking.embedding_model else 0.0))
    return load, stacker


def _submission_total(est: Estimate, cfg: PipelineConfig, arch: Arch) -> float | None:
    if est.seconds is None:
        return None
    return est.seconds + sum(_submission_overhead(cfg, arch, est.rows))


def build_plan(cfg: PipelineConfig, test: str | None = None, hardware: str = "t4x2", calibration: dict | None = None) -> PlanResult:
    """Estimate every stage of ``cfg`` on ``hardware``; the Kaggle verdict always uses 2x T4."""
    if hardware not in HARDWARE:
        raise UserError(f"--hardware: '{hardware}' is not one of {', '.join(HARDWARE)}")
    calib = load_calibration() if calibration is None else calibration
    notes: list[str] = []
    tokenizer, token_source = _local_tokenizer(cfg)

    test_path = test or cfg.data.test
    test_df = _try_read(test_path)
    if test_df is None:
        raise UserError(f"{test_path or 'data.test'}: test file not found (pass --test)")
    train_df = _try_read(cfg.data.train)
    train_rows = len(train_df) if train_df is not None else KAGGLE_TRAIN_ROWS
    if cfg.data.max_rows:
        train_rows = min(train_rows, cfg.data.max_rows)
    if train_df is None:
        notes.append(f"training file {cfg.data.train} not readable: assuming {KAGGLE_TRAIN_ROWS:,} rows (Kaggle train.csv) with the test set's lengths")

    test_rows = cfg.submission.expected_test_rows or len(test_df)
    length_source = test_df
    if cfg.submission.expected_test_rows is None and len(test_df) < 100:
        test_rows = KAGGLE_TEST_ROWS
        notes.append(f"{test_path} has {len(test_df)} rows (Kaggle's public test.csv?): planning for ~{KAGGLE_TEST_ROWS:,} hidden rows "
                     "(set submission.expected_test_rows)")
        if train_df is not None:
            length_source = train_df
    test_len = Lengths(natural_lengths(_sample(length_source, cfg.seed), tokenizer), test_rows, token_source)
    train_len = Lengths(natural_lengths(_sample(train_df if train_df is not None else test_df, cfg.seed), tokenizer), train_rows, token_source)
    k = cfg.folds.n_folds
    est: list[Estimate] = []

    def aug(train) -> float:
        return 2.0 if train.swap_augmentation == "both" else 1.0

    for t in cfg.teachers.models:
        if t.source != "model" or t.model is None:
            notes.append(f"teacher {t.name}: offline logits ({t.logits_file}), no GPU cost")
            continue
        name, arch, src = resolve_arch(t.model)
        if arch is None:
            notes.append(f"teacher {t.name}: {src}; skipped")
            continue
        tl = t.train.max_length or cfg.render.max_length
        rows = replace(train_len, rows=train_len.rows * (k - 1))  # k fold models, each on (k-1)/k of the rows
        e = estimate_training(f"teacher {t.name}: train x{k} folds", name, arch, hardware, model=t.model, lengths=rows,
                              max_length=tl, row_passes=t.train.epochs * aug(t.train), batch_size=t.train.batch_size,
                              optim=t.train.optim, calib=calib)
        est.append(e)
        pl = t.predict.max_length or cfg.render.max_length
        est.append(estimate_inference(f"teacher {t.name}: OOF predict", name, arch, hardware, quantization=t.model.quantization,
                                      dtype=t.model.dtype, lengths=train_len, max_length=pl, passes=2 if t.predict.tta else 1,
                                      tokens_per_batch=t.predict.tokens_per_batch, max_batch_size=t.predict.max_batch_size, calib=calib))

    s = cfg.student
    name, arch, src = resolve_arch(s.model)
    submission_t4 = None
    fits = None
    suggestions: list[str] = []
    if arch is None:
        notes.append(f"student: {src}; student and submission stages skipped")
    else:
        tl = s.train.max_length or cfg.render.max_length
        n_models = (k - 1 if s.oof else 0)
        full_rows = train_len.rows * n_models + (train_len.rows if s.final == "full" else 0)
        if full_rows:
            runs = f"{k} folds" if s.oof else ""
            runs += (" + full" if s.final == "full" else "") if runs else "full"
            est.append(estimate_training(f"student: train ({runs})", name, arch, hardware, model=s.model,
                                         lengths=replace(train_len, rows=full_rows), max_length=tl,
                                         row_passes=s.train.epochs * aug(s.train), batch_size=s.train.batch_size,
                                         optim=s.train.optim, calib=calib))
        if s.oof:
            est.append(estimate_inference("student: OOF predict", name, arch, hardware, quantization=s.model.quantization,
                                          dtype=s.model.dtype, lengths=train_len,
                                          max_length=s.predict.max_length or cfg.render.max_length,
                                          passes=2 if s.predict.tta else 1, tokens_per_batch=s.predict.tokens_per_batch,
                                          max_batch_size=s.predict.max_batch_size, calib=calib))
        est.append(_submission_estimate(cfg, arch, name, hardware, test_len, calib))
        t4 = _submission_estimate(cfg, arch, name, "t4x2", test_len, calib)
        submission_t4 = _submission_total(t4, cfg, arch)
        budget_s = parse_time_budget(cfg.submission.time_budget, "submission.time_budget")
        limit = min(KAGGLE_LIMIT_H * 3600, budget_s)
        fits = submission_t4 is not None and submission_t4 <= limit
        if not fits:
            sub = cfg.submission
            options = []
            if sub.predict.tta:
                options.append(("drop TTA (submission.predict.tta=false)", {"tta": False}))
            options.append((f"max length {sub.degraded_max_length} (submission.predict.max_length={sub.degraded_max_length})",
                            {"max_length": sub.degraded_max_length}))
            if sub.quantization != "8bit":
                options.append(("8-bit weights (submission.quantization=8bit)", {"quantization": "8bit"}))
            if sub.quantization != "4bit":
                options.append(("4-bit weights (submission.quantization=4bit; smaller, slightly worse)", {"quantization": "4bit"}))
            if sub.predict.tta:
                options.append((f"drop TTA and max length {sub.degraded_max_length}", {"tta": False, "max_length": sub.degraded_max_length}))
            for text, change in options:
                total = _submission_total(_submission_estimate(cfg, arch, name, "t4x2", test_len, calib, **change), cfg, arch)
                ok = total is not None and total <= limit
                suggestions.append(f"{text}: {format_seconds(total) if total is not None else 'does not fit in memory'}{' — fits' if ok else ''}")
            suggestions.append("a smaller student (e.g. fewer layers / a 2B model) or fewer test rows is the last resort; "
                               "the time budget degrades automatically at run time (tta → shorter → features-only)")
    overhead = _submission_overhead(cfg, arch, test_len.rows) if arch is not None else (0.0, 0.0)
    return PlanResult(hardware, est, submission_t4, fits, token_source, suggestions, notes, overhead)


def run_plan(cfg: PipelineConfig, test: str | None = None, hardware: str = "t4x2") -> PlanResult:
    """Print the plan table, the Kaggle verdict and what to change; return the :class:`PlanResult`."""
    res = build_plan(cfg, test=test, hardware=hardware)
    hw = HARDWARE[hardware]
    print(f"plan for {hw.name} ({hw.gpus}x {hw.memory_gib:g} GiB, {hw.peak_tflops_fp16:g} TFLOPS fp16 each); tokens: {res.token_source}")
    table = res.table()
    print(table.to_string(index=False) if len(table) else "(no GPU stages)")
    for e in res.estimates:
        print(f"  {e.stage}: {'; '.join(e.notes)}")
    for n in res.notes:
        print(f"note: {n}")
    if res.submission_t4_s is not None:
        budget = cfg.submission.time_budget
        verdict = "FITS" if res.fits_kaggle else "DOES NOT FIT"
        print(f"Kaggle submission on 2x T4 (incl. ~{format_seconds(res.overhead_s[0])} loading, ~{format_seconds(res.overhead_s[1])} stacker): "
              f"{format_seconds(res.submission_t4_s)} — {verdict} the {KAGGLE_LIMIT_H:g} h limit / time_budget {budget}")
    elif res.fits_kaggle is False:
        print("Kaggle submission on 2x T4: the student DOES NOT FIT in T4 memory at this precision")
    for s in res.suggestions:
        print(f"  change: {s}")
    return res
