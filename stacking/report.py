"""Stacking report: log loss / accuracy per stage, reliability diagram, feature importance.

:func:`stage_rows` returns the table as a list of dicts so the pipeline report can reuse it;
:func:`format_table` renders it for the console and Markdown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.io import atomic_path, atomic_write_text, read_keyed_table
from arena_kd.metrics import accuracy, log_loss, softmax

CLASS_SUFFIXES = ("a", "b", "tie")


def prob_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{c}" for c in CLASS_SUFFIXES]


def _row(stage: str, labels: np.ndarray, probs: np.ndarray, note: str = "") -> dict:
    return {"stage": stage, "rows": int(len(labels)), "log_loss": log_loss(labels, probs), "accuracy": accuracy(labels, probs), "note": note}


def _logits_to_probs(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    return softmax(df[cols].to_numpy(dtype=np.float64))


def fold_prior(labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """float64[n,3]: each row gets the class frequencies of the other folds (an honest constant baseline)."""
    y = np.asarray(labels, dtype=np.int64)
    out = np.empty((len(y), 3))
    for k in np.unique(folds):
        rest = y[folds != k] if (folds != k).any() else y
        out[folds == k] = (np.bincount(rest, minlength=3) + 1.0) / (len(rest) + 3.0)
    return out


def stage_rows(workdir: str | Path) -> list[dict]:
    """[{stage, rows, log_loss, accuracy, note}] on the stacker's OOF rows, from the files under ``workdir``.

    Stages (each only when its file exists): class prior (reference), teacher ensemble OOF, student OOF (orig), student + TTA (avg),
    stacker, stacker + temperature, features-only (+ temperature)."""
    wd = Path(workdir)
    oof, _ = read_keyed_table(wd / "stacking" / "oof.parquet")
    labels_df = oof[["id", "label"]]
    rows: list[dict] = []
    soft = wd / "teachers" / "soft_labels.parquet"
    if soft.is_file():
        s, _ = read_keyed_table(soft)
        m = labels_df.merge(s, on="id", how="inner")
        if len(m):
            rows.append(_row("teacher ensemble OOF", m["label"].to_numpy(), _logits_to_probs(m, ["logit_a", "logit_b", "logit_tie"])))
    stu = wd / "student" / "oof.parquet"
    if stu.is_file():
        s, _ = read_keyed_table(stu)
        m = labels_df.merge(s, on="id", how="inner")
        if len(m):
            y = m["label"].to_numpy()
            orig = ["orig_logit_a", "orig_logit_b", "orig_logit_tie"]
            if all(c in m.columns for c in orig):
                rows.append(_row("student OOF (orig)", y, _logits_to_probs(m, orig)))
            rows.append(_row("student + TTA (avg)", y, _logits_to_probs(m, ["logit_a", "logit_b", "logit_tie"])))
    y = oof["label"].to_numpy()
    rows.insert(0, _row("class prior (reference)", y, fold_prior(y, oof["fold"].to_numpy()), "label frequencies of the other folds"))
    for prefix, stage in (("stacker_raw", "stacker"), ("stacker", "stacker + temperature"),
                          ("features_only_raw", "features-only"), ("features_only", "features-only + temperature")):
        cols = prob_columns(prefix)
        if all(c in oof.columns for c in cols):
            rows.append(_row(stage, y, oof[cols].to_numpy(dtype=np.float64)))
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table (also readable on the console)."""
    lines = ["| stage | rows | log loss | accuracy |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['rows']} | {r['log_loss']:.4f} | {r['accuracy']:.3f} |")
    return "\n".join(lines)


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """One-vs-rest over all classes: per probability bin, mean predicted probability, observed frequency, count."""
    y = np.asarray(labels, dtype=np.int64)
    onehot = np.eye(3)[y].ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    df = pd.DataFrame({"bin": bins, "p": p, "y": onehot}).groupby("bin").agg(mean_pred=("p", "mean"), observed=("y", "mean"), count=("y", "size"))
    return df.reset_index()


def _save_fig(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def plot_reliability(labels: np.ndarray, before: np.ndarray, after: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    for name, probs, style in (("before calibration", before, "o-"), ("after calibration", after, "s-")):
        b = reliability_bins(labels, probs)
        ax.plot(b["mean_pred"], b["observed"], style, label=f"{name} (log loss {log_loss(labels, probs):.4f})")
    ax.set_xlabel("predicted probability (all classes, one-vs-rest)")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    _save_fig(fig, path)
    plt.close(fig)


def plot_importance(importance: pd.DataFrame, path: Path, title: str, top: int = 25) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imp = importance.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(imp) + 1.2))
    ax.barh(imp["feature"], imp["gain"])
    ax.set_xlabel("total gain")
    ax.set_title(title)
    _save_fig(fig, path)
    plt.close(fig)


def write_report(workdir: str | Path, importances: dict[str, pd.DataFrame], temperatures: dict[str, dict], notes: list[str]) -> tuple[Path, list[dict]]:
    """Write ``<workdir>/stacking/report.md`` + PNGs; return (path, stage rows)."""
    out = Path(workdir) / "stacking"
    rows = stage_rows(workdir)
    oof, _ = read_keyed_table(out / "oof.parquet")
    y = oof["label"].to_numpy()
    md = ["# Stacking report", "", *[f"- {n}" for n in notes], "", "## Log loss and accuracy per stage (out-of-fold)", "", format_table(rows), ""]
    md += ["## Temperature", ""]
    for name, t in temperatures.items():
        md.append(f"- {name}: T = {t['temperature']:.4f} (log loss {t['log_loss_before']:.4f} → {t['log_loss_after']:.4f} on {t['n']} OOF rows)")
    md.append("")
    for name in temperatures:
        raw, cal = prob_columns(f"{name}_raw"), prob_columns(name)
        if all(c in oof.columns for c in raw + cal):
            png = f"reliability_{name}.png"
            plot_reliability(y, oof[raw].to_numpy(), oof[cal].to_numpy(), out / png, f"{name}: reliability before/after temperature")
            md += [f"## Reliability diagram: {name}", "", f"![reliability {name}]({png})", ""]
    for name, imp in importances.items():
        png = f"importance_{name}.png"
        plot_importance(imp, out / png, f"{name}: feature importance (gain, top 25)")
        md += [f"## Feature importance: {name} (gain, top 25)", "", f"![importance {name}]({png})", "", "| feature | gain |", "|---|---:|"]
        md += [f"| {r.feature} | {r.gain:.1f} |" for r in imp.head(25).itertuples()]
        md.append("")
    path = atomic_write_text(out / "report.md", "\n".join(md))
    return path, rows
