"""The `make all` report's statistics on the held-out test labels: every stage with a 95% interval, paired
differences for every "did it pay for itself" line, and per-source tables.

Intervals are percentile bootstraps that resample prompts (data.folds.prompt_groups: the first user turn), not rows:
MT-Bench rows share their question across model pairs and turns, so their errors are not independent. A verdict
("yes" / "NO") is given only when the 95% interval of the paired difference excludes zero; otherwise the line says
"not resolved at this size".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arena_kd.common.metrics import accuracy, log_loss_difference, log_loss_interval


@dataclass
class Evaluation:
    """Probabilities of every stage on the same test rows, their labels, prompt groups and sources."""

    labels: np.ndarray
    groups: np.ndarray
    sources: np.ndarray | None
    seed: int = 0
    probs: dict[str, np.ndarray | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, stage: str, probs: np.ndarray | None, note: str = "") -> None:
        self.probs[stage] = None if probs is None else np.asarray(probs, dtype=np.float64)
        self.notes[stage] = note

    def row(self, stage: str, mask: np.ndarray | None = None) -> dict[str, Any]:
        p = self.probs.get(stage)
        if p is None:
            return {"stage": stage, "log_loss": None, "lo": None, "hi": None, "accuracy": None, "rows": 0, "note": self.notes.get(stage, "")}
        m = np.ones(len(self.labels), dtype=bool) if mask is None else mask
        ci = log_loss_interval(self.labels[m], p[m], self.groups[m], seed=self.seed)
        return {"stage": stage, "log_loss": ci["mean"], "lo": _finite(ci["lo"]), "hi": _finite(ci["hi"]),
                "accuracy": accuracy(self.labels[m], p[m]), "rows": int(m.sum()), "note": self.notes.get(stage, "")}

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(s) for s in self.probs]

    def source_masks(self) -> dict[str, np.ndarray]:
        if self.sources is None:
            return {}
        return {s: self.sources == s for s in sorted(set(self.sources.tolist()))}

    def per_source_rows(self, stages: list[str], extra: dict[str, dict[str, np.ndarray]] | None = None) -> list[dict[str, Any]]:
        """Rows per source for ``stages`` (those with probabilities) plus per-source-only entries of ``extra``
        ({stage: {source: probs for that source's rows}})."""
        out = []
        for src, m in self.source_masks().items():
            for s in stages:
                if self.probs.get(s) is not None:
                    out.append({**self.row(s, m), "source": src})
            for s, by_src in (extra or {}).items():
                if src in by_src:
                    y, g = self.labels[m], self.groups[m]
                    ci = log_loss_interval(y, by_src[src], g, seed=self.seed)
                    out.append({"stage": s, "log_loss": ci["mean"], "lo": _finite(ci["lo"]), "hi": _finite(ci["hi"]),
                                "accuracy": accuracy(y, by_src[src]), "rows": int(m.sum()), "note": "", "source": src})
        return out

    def compare(self, a: str, b: str, what: str, mask: np.ndarray | None = None, scope: str = "") -> dict[str, Any] | None:
        """'Does a beat b?' with the paired difference log_loss(a) − log_loss(b) and its interval."""
        pa, pb = self.probs.get(a), self.probs.get(b)
        if pa is None or pb is None:
            return None
        m = np.ones(len(self.labels), dtype=bool) if mask is None else mask
        d = log_loss_difference(self.labels[m], pa[m], pb[m], self.groups[m], seed=self.seed)
        lo, hi = _finite(d["lo"]), _finite(d["hi"])
        answer = "yes" if hi is not None and hi < 0 else "NO" if lo is not None and lo > 0 else "not resolved at this size"
        return {"what": what, "scope": scope or "all test rows", "a": a, "b": b, "diff": d["mean"], "lo": lo, "hi": hi,
                "answer": answer, "rows": int(m.sum())}


def _finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _fmt(v: float | None, nd: int = 4) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _ci(r: dict[str, Any]) -> str:
    return "—" if r.get("lo") is None else f"[{r['lo']:.4f}, {r['hi']:.4f}]"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: stage, log loss, its 95% interval, accuracy, note (— where a stage has no predictions)."""
    by_src = any("source" in r for r in rows)
    lines = [("| source " if by_src else "") + "| stage | log loss | 95% interval | accuracy | note |",
             ("|---" if by_src else "") + "|---|---|---|---|---|"]
    for r in rows:
        src = f"| {r['source']} " if by_src else ""
        lines.append(f"{src}| {r['stage']} | {_fmt(r['log_loss'])} | {_ci(r)} | {_fmt(r['accuracy'], 3)} | {r.get('note', '')} |")
    return "\n".join(lines)


def format_verdicts(verdicts: list[dict[str, Any]]) -> str:
    lines = []
    for v in verdicts:
        ci = "—" if v["lo"] is None else f"[{v['lo']:+.4f}, {v['hi']:+.4f}]"
        lines.append(f"- {v['what']} ({v['scope']}, {v['rows']} rows): **{v['answer']}** — log loss difference "
                     f"{v['diff']:+.4f}, 95% interval {ci} ({v['a']} minus {v['b']})")
    return "\n".join(lines)
