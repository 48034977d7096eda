"""`arena-kd plan`: wall time (low / expected / high) and GPU memory of every stage of a config, and whether the
Kaggle submission fits its budget on 2x T4 — before spending GPU hours.

Jobs are split by module: token counts (:mod:`arena_kd.planner.lengths`), the cost model
(:mod:`arena_kd.planner.cost`), constants with their sources (:mod:`arena_kd.planner.specs`) and measured GPU results
(:mod:`arena_kd.planner.calibration`). This module assembles the stages, the verdict and the alternatives, and prints
them (a table with numbered sources, or one JSON object with ``--json``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena_kd.common.config import PipelineConfig
from arena_kd.common.config_model import ModelConfig
from arena_kd.common.durations import format_seconds, parse_time_budget
from arena_kd.common.errors import UserError
from arena_kd.planner.calibration import load_calibration
from arena_kd.planner.cost import Estimate, estimate_inference, estimate_training, fixed_stage, uses_eager, weight_gib
from arena_kd.planner.lengths import Lengths, local_tokenizer, measure_lengths, read_pairs_or_none, row_chars
from arena_kd.planner.specs import (
    ARCH_ALIASES,
    ARCHS,
    HARDWARE,
    HARDWARE_ALIASES,
    KAGGLE_HIDDEN_CHARS_PER_ROW,
    KAGGLE_HIDDEN_CHARS_SOURCE,
    KAGGLE_LIMIT_H,
    KAGGLE_TEST_ROWS,
    KAGGLE_TRAIN_ROWS,
    Arch,
)

log = logging.getLogger("arena_kd.submission")

KAGGLE_HW = "t4x2"
LOAD_GIB_PER_S = 0.15
"""Assumed: reading the export from a Kaggle dataset and quantising it while loading, GiB of export per second
(one copy per GPU, loaded one after the other). Range x0.5..x2 (assumption)."""
STACKER_S_PER_ROW = {"features": 0.005, "embeddings": 0.024}
"""Assumed seconds per test row of the stacker pass: TF-IDF/length features on CPU; MiniLM embeddings on a T4
(~10 min for 25k rows, per configs/kaggle-gemma2.yaml). Range x0.5..x2 (assumption)."""
RATE_RANGE = (0.5, 1.0, 2.0)
VERDICTS = ("fits", "tight", "does_not_fit")
GPTQ_NOTE = ("GPTQ 8-bit (the 1st place's choice, one orientation per T4) is not a quantization this project "
             "supports (none | 8bit | 4bit), so it is not offered")


def resolve_arch(model: ModelConfig) -> tuple[str, Arch | None, str]:
    """(name, Arch or None, source) for a model section: the table, a random_init dict, or a local config.json."""
    from arena_kd.common.io import resolve_path

    name = model.backbone.lower()
    for key, aliases in ARCH_ALIASES.items():
        if any(a in name for a in aliases):
            return key, ARCHS[key], "published config.json (table in planner/specs.py)"
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
    return model.backbone.removeprefix("pkg://"), arch, source


def hardware_key(name: str) -> str:
    key = HARDWARE_ALIASES.get(name, name)
    if key not in HARDWARE:
        raise UserError(f"--hardware: '{name}' is not one of {', '.join(HARDWARE)}")
    return key


def verdict(total: tuple[float, float, float] | None, budget_s: float) -> str:
    """fits: even the high estimate is inside the budget; tight: only the expected one; does_not_fit otherwise."""
    if total is None or total[1] > budget_s:
        return "does_not_fit"
    return "fits" if total[2] <= budget_s else "tight"


@dataclass
class PlanResult:
    hardware: str
    estimates: list[Estimate]  # pipeline stages on ``hardware``
    submission: list[Estimate]  # the Kaggle submission on 2x T4
    total: tuple[float, float, float] | None
    budget_s: float
    verdict: str | None
    alternatives: list[dict[str, Any]]
    token_source: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        tot = self.total
        return {"hardware": self.hardware, "stages": [e.to_json() for e in self.estimates + self.submission],
                "budget_s": self.budget_s, "verdict": self.verdict,
                "submission_total": None if tot is None else {"low_s": tot[0], "expected_s": tot[1], "high_s": tot[2]},
                "alternatives": self.alternatives, "tokens": self.token_source, "notes": self.notes}


def _sum(stages: list[Estimate]) -> tuple[float, float, float] | None:
    if any(s.seconds is None for s in stages):
        return None
    return tuple(sum(s.seconds[i] for s in stages) for i in range(3))  # type: ignore[return-value]


def _submission_stages(cfg: PipelineConfig, arch: Arch, name: str, lengths: Lengths, calib: dict,
                       **change) -> list[Estimate]:
    """Load the export, run the student over the hidden test (TTA = 2 passes), run the stacker — on 2x T4."""
    sub, p, s = cfg.submission, cfg.submission.predict, cfg.student
    max_length = change.get("max_length") or p.max_length or s.predict.max_length or cfg.render.max_length
    tta = change.get("tta", p.tta)
    members = change.get("members", ensemble_members(cfg))  # a fold ensemble runs every fold model over the rows
    label = "submission: student inference" + (f" ({members} fold models)" if members > 1 else "")
    student = estimate_inference(label, name, arch, KAGGLE_HW,
                                 quantization=change.get("quantization", sub.quantization), dtype=sub.dtype,
                                 lengths=lengths, max_length=max_length, passes=(2 if tta else 1) * members,
                                 tokens_per_batch=p.tokens_per_batch, max_batch_size=p.max_batch_size, calib=calib,
                                 eager=uses_eager(s.model))
    export_gib = weight_gib(arch, s.export_dtype)
    load = members * HARDWARE[KAGGLE_HW].gpus * export_gib / LOAD_GIB_PER_S
    per_row = STACKER_S_PER_ROW["features"] + (STACKER_S_PER_ROW["embeddings"] if cfg.stacking.embedding_model else 0.0)
    features = "features + MiniLM" if cfg.stacking.embedding_model else "features"
    return [
        fixed_stage("submission: load export", KAGGLE_HW, tuple(load * f for f in RATE_RANGE),
                    f"assumption: {LOAD_GIB_PER_S} GiB/s per GPU copy of a {export_gib:.1f} GiB export"
                    + (f" (x{members} members, loaded one after the other)" if members > 1 else "") + ", x0.5-x2"),
        student,
        fixed_stage("submission: stacker", KAGGLE_HW, tuple(lengths.rows * per_row * f for f in RATE_RANGE),
                    f"assumption: {per_row * 1000:.0f} ms/row ({features}), x0.5-x2", lengths.rows),
    ]


def ensemble_members(cfg: PipelineConfig) -> int:
    """Models the submission runs over every row: the k fold students with student.final=fold_ensemble, else 1."""
    return cfg.folds.n_folds if cfg.student.final == "fold_ensemble" else 1


def _alternatives(cfg: PipelineConfig, arch: Arch, name: str, lengths: Lengths, calib: dict,
                  budget_s: float) -> list[dict]:
    sub = cfg.submission
    cur_len = sub.predict.max_length or cfg.student.predict.max_length or cfg.render.max_length
    options: list[tuple[str, dict]] = []
    if ensemble_members(cfg) > 1:
        options.append(("one final model instead of the fold ensemble (student.final=full or fold_soup)",
                        {"members": 1}))
    options.append(("drop TTA (submission.predict.tta=false)", {"tta": False}) if sub.predict.tta
                   else ("add TTA (submission.predict.tta=true)", {"tta": True}))
    if sub.degraded_max_length < cur_len:
        short = sub.degraded_max_length
        options.append((f"max length {short} (submission.predict.max_length={short})", {"max_length": short}))
    for q in ("4bit", "8bit"):
        if sub.quantization != q:
            options.append((f"{q[0]}-bit weights (submission.quantization={q})", {"quantization": q}))
    if sub.predict.tta and sub.degraded_max_length < cur_len:
        options.append((f"drop TTA and max length {sub.degraded_max_length}",
                        {"tta": False, "max_length": sub.degraded_max_length}))
    if sub.predict.tta and sub.quantization != "4bit" and sub.degraded_max_length < cur_len:
        options.append((f"4-bit weights and max length {sub.degraded_max_length}, keep TTA",
                        {"quantization": "4bit", "max_length": sub.degraded_max_length}))
    out = []
    for text, change in options:
        tot = _sum(_submission_stages(cfg, arch, name, lengths, calib, **change))
        out.append({"name": text, "change": change, "low_s": tot and tot[0], "expected_s": tot and tot[1],
                    "high_s": tot and tot[2], "verdict": verdict(tot, budget_s)})
    return out


def _test_lengths(cfg: PipelineConfig, test: str | None, tokenizer, token_source: str, test_chars: float | None,
                  notes: list[str]) -> tuple[Lengths, Any]:
    test_path = test or cfg.data.test
    test_df = read_pairs_or_none(test_path)
    if test_df is None:
        raise UserError(f"{test_path or 'data.test'}: test file not found (pass --test)")
    train_df = read_pairs_or_none(cfg.data.train)
    rows = cfg.submission.expected_test_rows or len(test_df)
    source_df = test_df
    if cfg.submission.expected_test_rows is None and len(test_df) < 100:
        rows = KAGGLE_TEST_ROWS
        notes.append(f"{test_path} has {len(test_df)} rows (Kaggle's public test.csv?): planning for "
                     f"~{KAGGLE_TEST_ROWS:,} hidden rows (set submission.expected_test_rows)")
        if train_df is not None:
            source_df = train_df
    scale = 1.0
    stand_in = rows > len(source_df)
    target = test_chars if test_chars is not None else (KAGGLE_HIDDEN_CHARS_PER_ROW if stand_in else 0.0)
    mean_chars = float(row_chars(source_df).mean()) if len(source_df) else 0.0
    src = token_source
    if target > 0 and mean_chars > 0:
        scale = target / mean_chars
        why = KAGGLE_HIDDEN_CHARS_SOURCE if test_chars is None else "--test-chars-per-row"
        notes.append(f"test lengths: the shape of {len(source_df):,} rows of {test_path} "
                     f"(mean {mean_chars:,.0f} chars/row) rescaled x{scale:.2f} to {target:,.0f} chars/row "
                     f"for the {rows:,} planned rows ({why}; --test-chars-per-row 0 keeps the file's lengths)")
        src = f"{token_source}; rows rescaled to {target:,.0f} chars ({why.split(':')[0]})"
    return measure_lengths(source_df, rows, tokenizer, src, cfg.seed, scale, cfg.render.template), train_df


def build_plan(cfg: PipelineConfig, test: str | None = None, hardware: str = KAGGLE_HW, calibration: dict | None = None,
               calibration_files: list[str] | None = None, test_chars: float | None = None) -> PlanResult:
    """Estimate every stage of ``cfg`` on ``hardware``; the Kaggle verdict always uses 2x T4.

    ``calibration``: efficiencies to use instead of the shipped files (tests); ``calibration_files``: more results
    files (``--calibration``); ``test_chars``: mean characters a hidden-test row (None: the competition's figure
    when the test file stands in for more rows than it has; 0: the file as is)."""
    hardware = hardware_key(hardware)
    notes: list[str] = []
    if calibration is None:
        calibration, cal_notes = load_calibration(calibration_files)
        notes += cal_notes
    tokenizer, token_source = local_tokenizer(cfg)
    test_len, train_df = _test_lengths(cfg, test, tokenizer, token_source, test_chars, notes)
    if train_df is not None:
        train_rows = min(len(train_df), cfg.data.max_rows or len(train_df))
        train_len = measure_lengths(train_df, train_rows, tokenizer, token_source, cfg.seed,
                                    template=cfg.render.template)
    else:
        notes.append(f"training file {cfg.data.train} not readable: assuming {KAGGLE_TRAIN_ROWS:,} rows "
                     "(Kaggle train.csv) with the test set's lengths")
        train_len = test_len.with_rows(KAGGLE_TRAIN_ROWS)
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
        # k models on (k-1)/k of the rows
        est.append(estimate_training(f"teacher {t.name}: train x{k} folds", name, arch, hardware, model=t.model,
                                     lengths=train_len.with_rows(train_len.rows * (k - 1)),
                                     max_length=t.train.max_length or cfg.render.max_length,
                                     row_passes=t.train.epochs * aug(t.train), batch_size=t.train.batch_size,
                                     optim=t.train.optim, calib=calibration))
        est.append(estimate_inference(f"teacher {t.name}: OOF predict", name, arch, hardware,
                                      quantization=t.model.quantization, dtype=t.model.dtype, lengths=train_len,
                                      max_length=t.predict.max_length or cfg.render.max_length,
                                      passes=2 if t.predict.tta else 1, tokens_per_batch=t.predict.tokens_per_batch,
                                      max_batch_size=t.predict.max_batch_size, calib=calibration,
                                      eager=uses_eager(t.model)))

    s = cfg.student
    name, arch, src = resolve_arch(s.model)
    budget_s = min(KAGGLE_LIMIT_H * 3600, parse_time_budget(cfg.submission.time_budget, "submission.time_budget"))
    if arch is None:
        notes.append(f"student: {src}; student and submission stages skipped")
        return PlanResult(hardware, est, [], None, budget_s, None, [], token_source, notes)
    n_models = (k - 1 if s.oof else 0)
    full_rows = train_len.rows * n_models + (train_len.rows if s.final == "full" else 0)
    if full_rows:
        runs = f"{k} folds" if s.oof else ""
        runs += (" + full" if s.final == "full" else "") if runs else "full"
        est.append(estimate_training(f"student: train ({runs})", name, arch, hardware, model=s.model,
                                     lengths=train_len.with_rows(full_rows),
                                     max_length=s.train.max_length or cfg.render.max_length,
                                     row_passes=s.train.epochs * aug(s.train), batch_size=s.train.batch_size,
                                     optim=s.train.optim, calib=calibration))
    if s.oof:
        est.append(estimate_inference("student: OOF predict", name, arch, hardware, quantization=s.model.quantization,
                                      dtype=s.model.dtype, lengths=train_len,
                                      max_length=s.predict.max_length or cfg.render.max_length,
                                      passes=2 if s.predict.tta else 1, tokens_per_batch=s.predict.tokens_per_batch,
                                      max_batch_size=s.predict.max_batch_size, calib=calibration,
                                      eager=uses_eager(s.model)))
    sub = _submission_stages(cfg, arch, name, test_len, calibration)
    total = _sum(sub)
    alternatives = _alternatives(cfg, arch, name, test_len, calibration, budget_s)
    notes.append(GPTQ_NOTE)
    return PlanResult(hardware, est, sub, total, budget_s, verdict(total, budget_s), alternatives, token_source, notes)


def _fmt(t: tuple[float, float, float] | None) -> str:
    return "does not fit in memory" if t is None else " / ".join(format_seconds(x) for x in t)


def _word(v: str) -> str:
    return v.replace("_", " ").upper()


def print_plan(cfg: PipelineConfig, res: PlanResult) -> None:
    """Human-readable plan: one table with low/expected/high and numbered sources, the verdict, the alternatives."""
    import pandas as pd

    hw = HARDWARE[res.hardware]
    print(f"plan for {hw.name} ({hw.gpus}x {hw.usable_gib:.1f} GiB usable, {hw.peak_tflops_fp16:g} TFLOPS fp16 each); "
          f"Kaggle submission on {HARDWARE[KAGGLE_HW].name}; times low / expected / high")
    sources: list[str] = []
    rows = []
    for e in res.estimates + res.submission:
        refs = []
        for src in e.sources:
            if src not in sources:
                sources.append(src)
            refs.append(f"[{sources.index(src) + 1}]")
        rows.append({**e.row(), "hw": e.hardware, "sources": "".join(refs)})
    print(pd.DataFrame(rows).to_string(index=False) if rows else "(no GPU stages)")
    for e in res.estimates + res.submission:
        if e.notes:
            print(f"  {e.stage}: {'; '.join(e.notes)}")
    print("sources:")
    for i, src in enumerate(sources, 1):
        print(f"  [{i}] {src}")
    for n in res.notes:
        print(f"note: {n}")
    if res.verdict is None:
        return
    budget = (f"{format_seconds(res.budget_s)} (min of Kaggle's {KAGGLE_LIMIT_H:g} h and submission.time_budget "
              f"{cfg.submission.time_budget})")
    tta = "with" if cfg.submission.predict.tta else "without"
    print(f"Kaggle submission on 2x T4, {tta} TTA: {_fmt(res.total)} against {budget} -> {_word(res.verdict)}")
    for a in res.alternatives:
        t = None if a["expected_s"] is None else (a["low_s"], a["expected_s"], a["high_s"])
        print(f"  alternative: {a['name']}: {_fmt(t)} -> {_word(a['verdict'])}")


def run_plan(cfg: PipelineConfig, test: str | None = None, hardware: str = KAGGLE_HW, *, as_json: bool = False,
             calibration_files: list[str] | None = None, test_chars: float | None = None) -> PlanResult:
    """Print the plan (table or ``--json``); return the :class:`PlanResult`."""
    res = build_plan(cfg, test=test, hardware=hardware, calibration_files=calibration_files, test_chars=test_chars)
    if as_json:
        print(json.dumps(res.to_json(), indent=1, default=float))
    else:
        print_plan(cfg, res)
    return res
