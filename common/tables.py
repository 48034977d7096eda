"""Tables and figures shared by the stage reports (``stacking/report.md`` and the `make all` report): one log-loss
row with its 95% prompt-bootstrap interval, the Markdown table of such rows, and bar charts written atomically.

A row is ``{"stage", "rows", "log_loss", "lo", "hi", "accuracy", "note"}`` (plus ``"source"`` in per-source tables);
an interval that cannot be computed (fewer than two prompt groups) is ``None``, printed as "—".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from arena_kd.common.io import atomic_path
from arena_kd.common.metrics import accuracy, log_loss_interval


def finite(x: float | None) -> float | None:
    """``x`` as a float, or None when it is missing or not finite (JSON has no NaN)."""
    return float(x) if x is not None and np.isfinite(x) else None


def interval_row(stage: str, labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None, seed: int,
                 note: str = "") -> dict[str, Any]:
    """Log loss of ``probs`` on ``labels`` with its 95% bootstrap interval over ``groups`` (prompts), and accuracy."""
    ci = log_loss_interval(labels, probs, groups, seed=seed)
    return {"stage": stage, "rows": int(len(labels)), "log_loss": ci["mean"], "lo": finite(ci["lo"]),
            "hi": finite(ci["hi"]), "accuracy": accuracy(labels, probs), "note": note}


def _number(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _interval(r: dict[str, Any]) -> str:
    lo = r.get("lo")
    return "—" if lo is None or not np.isfinite(lo) else f"[{lo:.4f}, {r['hi']:.4f}]"


def _versus(r: dict[str, Any]) -> str:
    """The paired-difference cells of a row against a baseline (``vs``: {diff, lo, hi, answer}), or dashes."""
    v = r.get("vs")
    if not v:
        return " — | — | — |"
    ci = "—" if v.get("lo") is None else f"[{v['lo']:+.4f}, {v['hi']:+.4f}]"
    return f" {v['diff']:+.4f} | {ci} | {v['answer']} |"


def format_table(rows: list[dict[str, Any]], *, counts: bool = False, versus: str | None = None) -> str:
    """Markdown (readable on the console too): stage, [rows,] log loss, its 95% interval, accuracy, note; a 'source'
    column first when the rows carry one; "—" where a stage has no predictions or no interval. ``versus``: the name of
    a baseline every row's ``vs`` entry was paired against — three more columns (the difference, its interval, and
    whether the stage beats the baseline)."""
    by_src = any("source" in r for r in rows)
    head = "| stage | rows | log loss | 95% interval | accuracy |" if counts else \
        "| stage | log loss | 95% interval | accuracy |"
    rule = "|---|---:|---:|---|---:|" if counts else "|---|---|---|---|"
    if versus:
        head += f" minus {versus} | 95% interval | beats it? |"
        rule += "---:|---|---|"
    lines = [("| source " if by_src else "") + head + " note |", ("|---" if by_src else "") + rule + "---|"]
    for r in rows:
        src = f"| {r['source']} " if by_src else ""
        n = f" {r['rows']} |" if counts else ""
        vs = _versus(r) if versus else ""
        lines.append(f"{src}| {r['stage']} |{n} {_number(r['log_loss'])} | {_interval(r)} | "
                     f"{_number(r['accuracy'], 3)} |{vs} {r.get('note', '')} |")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (reports run on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int) -> None:
    """Lay out, write ``path`` as PNG atomically, close the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


def bar_chart(labels: Sequence[str], values: Sequence[float], path: Path, *, xlabel: str, title: str | None = None,
              width: float = 7, bar_height: float = 0.25, dpi: int = 90, color: str | None = None,
              vline: float | None = None, xlim: tuple[float, float] | None = None) -> None:
    """Horizontal bars, the first label on top; ``vline``: a dashed reference line (e.g. the uniform answer)."""
    fig, ax = pyplot().subplots(figsize=(width, bar_height * len(labels) + 1.2))
    ax.barh(list(labels)[::-1], list(values)[::-1], color=color)
    if vline is not None:
        ax.axvline(vline, color="grey", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    if title is not None:
        ax.set_title(title)
    if xlim is not None:
        ax.set_xlim(*xlim)
    save_figure(fig, path, dpi)


TRAINING_TERMS = {"loss_ce": "hard-label CE", "loss_kl": "KL to the teachers (KD)",
                  "loss_cos": "cosine to the teachers"}


def training_curves_chart(runs: dict[str, list[dict[str, Any]]], path: Path, *, title: str, dpi: int = 90) -> bool:
    """One panel per logged loss term (TRAINING_TERMS, else the total ``loss``) against the step, one line per run
    (e.g. fold0, fold1, final): the per-step log records of llm.trainer (metrics.jsonl). False (nothing written) when
    no run logged a training step."""
    steps = {name: [r for r in recs if "loss" in r and "step" in r] for name, recs in runs.items()}
    steps = {n: recs for n, recs in steps.items() if recs}
    terms = [t for t in TRAINING_TERMS if any(t in r for recs in steps.values() for r in recs)] or ["loss"]
    if not steps:
        return False
    fig, axes = pyplot().subplots(1, len(terms), figsize=(4.2 * len(terms), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for name, recs in steps.items():
            pts = [(r["step"], r[term]) for r in recs if term in r]
            if pts:
                ax.plot(*zip(*pts), marker=".", lw=1, label=name)
        ax.set_title(TRAINING_TERMS.get(term, "training loss"), fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi)
    return True
