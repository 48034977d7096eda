"""The GPU results schema: written by ``benchmarks/gpu_throughput.py`` (via ``benchmarks/gpu_check.sh``), read by
``arena-kd plan``. One module so the writer and the reader cannot drift apart.

A results file (JSON, schema ``arena-kd/gpu-results/v1``)::

    {"schema": "arena-kd/gpu-results/v1", "card": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "card_memory_gib": 79.1,
     "date": "2026-11-27T12:00:00Z", "dry_run": false,
     "software": {"torch": "...", "cuda": "...", "transformers": "...", "peft": "...", "bitsandbytes": null},
     "records": [{"kind": "inference" | "train_step", "model": "gemma2-9b", "precision": "bf16|fp16|8bit|4bit",
                  "seq_len": 1024, "batch_rows": 8, "layers_built": 14, "layers_full": 42,
                  "tokens_per_s": ..., "tokens_per_s_full": ..., "peak_gib": ..., "peak_gib_full": ...,
                  "gradient_checkpointing": false, "lora_r": null}, ...],
     "skipped": [{"what": "bnb 8-bit", "why": "bitsandbytes not installed"}],
     "steps": [{"name": "rehearsal: train + export on CUDA", "status": "ok|failed|skipped", "seconds": 41.0,
                "detail": "..."}]}

``*_full`` figures are scaled from ``layers_built`` to ``layers_full`` decoder layers (time x full/built; memory: the
layer-proportional part x full/built), so a short GPU window can stand for the whole model.

The planner turns each record into an efficiency (achieved FLOP/s per GPU / the card's datasheet peak) for the
hardware profile whose ``card_names`` match ``card``; dry runs (tiny shapes, CPU) are read but never calibrate.
Shipped files live in ``planner/calibration_data/*.json`` (package data); ``arena-kd plan --calibration FILE``
adds one more.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from arena_kd.common.errors import UserError
from arena_kd.planner.specs import ARCHS, HARDWARE, RECOMPUTE_FLOPS_FACTOR, TRAIN_FLOPS_FACTOR

SCHEMA = "arena-kd/gpu-results/v1"
KINDS = ("inference", "train_step")
PRECISIONS = ("bf16", "fp16", "8bit", "4bit")
CALIBRATED_SPREAD = (0.85, 1.15)
"""Assumed range around a measured efficiency (random weights, uniform full-length rows, depth scaled from fewer
layers) — narrower than the assumptions it replaces, not zero."""


@dataclass
class Record:
    kind: str
    model: str
    precision: str
    seq_len: int
    batch_rows: int
    layers_built: int
    layers_full: int
    tokens_per_s: float
    tokens_per_s_full: float
    peak_gib: float | None = None
    peak_gib_full: float | None = None
    gradient_checkpointing: bool = False
    lora_r: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind '{self.kind}' not in {KINDS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision '{self.precision}' not in {PRECISIONS}")
        if not (self.tokens_per_s > 0 and self.tokens_per_s_full > 0 and self.seq_len > 0):
            raise ValueError("tokens_per_s, tokens_per_s_full and seq_len must be > 0")
        if not 0 < self.layers_built <= self.layers_full:
            raise ValueError(f"layers_built {self.layers_built} must be in 1..layers_full ({self.layers_full})")


@dataclass
class Results:
    card: str
    date: str
    records: list[Record]
    gpu_count: int = 1
    card_memory_gib: float | None = None
    dry_run: bool = False
    software: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    path: str = ""  # where it was read from (not written)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return {"schema": SCHEMA, **d}

    def provenance(self) -> str:
        return f"calibrated from {self.path or '(unsaved)'}, {self.card}, {self.date[:10]}"


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_results(path: str | Path, results: Results) -> Path:
    """Atomically write ``results`` as JSON (the only writer of the schema)."""
    from arena_kd.common.io import atomic_write_json

    return atomic_write_json(Path(path), results.to_json())


def read_results(path: str | Path) -> Results:
    """Parse and validate a results file; one clear line (UserError) naming the file and the problem otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: calibration file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{p}: not a JSON results file ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{p}: schema '{got}' is not '{SCHEMA}' (write it with benchmarks/gpu_check.sh)")
    try:
        records = [Record(**r) for r in data.get("records", [])]
        return Results(card=str(data["card"]), date=str(data["date"]), records=records,
                       gpu_count=int(data.get("gpu_count", 1)), card_memory_gib=data.get("card_memory_gib"),
                       dry_run=bool(data.get("dry_run", False)), software=dict(data.get("software", {})),
                       skipped=list(data.get("skipped", [])), steps=list(data.get("steps", [])), path=str(p))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{p}: bad results record ({exc})") from None


def profiles_for_card(card: str) -> list[str]:
    """Hardware profile keys (arena_kd.planner.specs.HARDWARE) whose card_names occur in ``card``."""
    up = card.upper()
    return [k for k, hw in HARDWARE.items() if any(n.upper() in up for n in hw.card_names)]


def record_efficiency(rec: Record, peak_tflops: float) -> float | None:
    """Achieved fraction of ``peak_tflops`` of one record at full depth (None for models not in the table)."""
    arch = ARCHS.get(rec.model)
    if arch is None:
        return None
    per_token = arch.forward_flops_per_token(rec.seq_len)
    if rec.kind == "train_step":
        per_token *= TRAIN_FLOPS_FACTOR + (RECOMPUTE_FLOPS_FACTOR if rec.gradient_checkpointing else 0.0)
    return rec.tokens_per_s_full * per_token / (peak_tflops * 1e12)


@dataclass(frozen=True)
class Calibrated:
    efficiency: float
    provenance: str


def efficiencies(results: Results) -> dict[tuple[str, str, str], Calibrated]:
    """{(hardware key, precision, 'inference'|'train'): Calibrated}, averaging the sequence lengths measured."""
    if results.dry_run:
        return {}
    found: dict[tuple[str, str, str], list[float]] = {}
    for hw_key in profiles_for_card(results.card):
        for rec in results.records:
            eff = record_efficiency(rec, HARDWARE[hw_key].peak_tflops_fp16)
            if eff is not None:
                mode = "train" if rec.kind == "train_step" else "inference"
                found.setdefault((hw_key, rec.precision, mode), []).append(eff)
    return {k: Calibrated(sum(v) / len(v), results.provenance()) for k, v in found.items()}


def shipped_files() -> list[Path]:
    """Results files shipped as package data (planner/calibration_data/*.json), oldest name first."""
    folder = resources.files("arena_kd.planner") / "calibration_data"
    try:
        return sorted(Path(str(f)) for f in folder.iterdir() if f.name.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_calibration(extra: list[str | Path] | None = None) -> tuple[dict[tuple[str, str, str], Calibrated], list[str]]:
    """(efficiencies, notes) from the shipped files, then ``extra`` files (later files win)."""
    calib: dict[tuple[str, str, str], Calibrated] = {}
    notes: list[str] = []
    for path in [*shipped_files(), *(extra or [])]:
        res = read_results(path)
        if res.dry_run:
            notes.append(f"{path}: dry run on {res.card} ({res.date[:10]}), not used to calibrate")
            continue
        got = efficiencies(res)
        if not got:
            notes.append(f"{path}: card '{res.card}' matches no hardware profile ({', '.join(HARDWARE)}); not used")
        calib.update(got)
        if got:
            notes.append(f"{res.provenance()}: {len(res.records)} records")
    return calib, notes
