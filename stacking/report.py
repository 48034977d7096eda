"""Stacking report: every candidate's out-of-fold log loss with a prompt-bootstrap interval, the selection, per-source
and per-provenance tables, reliability diagrams, feature importance.

:func:`stage_rows` returns the table as a list of dicts (rows of :mod:`arena_kd.common.tables`, whose
``format_table`` renders them for the console and Markdown).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.io import atomic_write_text, read_keyed_table
from arena_kd.common.keys import CLASS_SUFFIXES, LOGIT_COLUMNS
from arena_kd.common.metrics import log_loss, softmax, verdict
from arena_kd.common.tables import bar_chart, format_table, interval_row, pyplot, save_figure


def prob_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{c}" for c in CLASS_SUFFIXES]


CANDIDATE_LABELS = {
    "stacker": "stacker (student TTA + features)", "stacker_single": "stacker (student, one orientation + features)",
    "features_only": "features-only stacker", "length_only": "length-only LightGBM",
    "prior": "class prior (A/B pooled)", "student": "student TTA + temperature",
    "student_single": "student one orientation + temperature",
    "log_pool": "log pool (features-only + student TTA)",
    "log_pool_single": "log pool (features-only + student, one orientation)",
}


def stage_rows(workdir: str | Path, winners: dict[str, str] | None = None, seed: int = 0,
               oof: pd.DataFrame | None = None) -> list[dict]:
    """[{stage, rows, log_loss, lo, hi, accuracy, note}] on the stacker's rows, from the files under ``workdir``
    (``oof``: stacking/oof.parquet when the caller has read it already).

    Every candidate of oof.parquet (calibrated with the cross-fitted temperature, i.e. as selected), the uniform
    answer, and — on the rows they cover — the teacher ensemble OOF and the student (orig, TTA). Intervals: 95%
    bootstrap over prompts."""
    wd = Path(workdir)
    if oof is None:
        oof, _ = read_keyed_table(wd / "stacking" / "oof.parquet")
    winners = winners or {}
    groups = prompt_groups_of(oof, oof["id"])
    y = oof["label"].to_numpy()
    rows = [interval_row("uniform (1/3 each)", y, np.full((len(y), 3), 1 / 3), groups, seed)]
    chosen: dict[str, list[str]] = {}
    for mode, name in winners.items():
        if mode != "short":
            chosen.setdefault(name, []).append(mode)
    for name in CANDIDATE_LABELS:
        cols = prob_columns(name)
        if all(c in oof.columns for c in cols):
            note = f"selected for student mode {', '.join(chosen[name])}" if name in chosen else ""
            rows.append(interval_row(CANDIDATE_LABELS[name], y, oof[cols].to_numpy(dtype=np.float64), groups, seed,
                                     note))
    labels_df = oof[["id", "label"]]
    soft = wd / "teachers" / "soft_labels.parquet"
    if soft.is_file():
        s, _ = read_keyed_table(soft)
        m = labels_df.merge(s, on="id", how="inner")
        if len(m):
            probs = softmax(m[list(LOGIT_COLUMNS)].to_numpy(dtype=np.float64))
            rows.append(interval_row("teacher ensemble OOF", m["label"].to_numpy(), probs,
                                     prompt_groups_of(oof, m["id"]), seed, "LLM rows only"))
    return rows


def prompt_groups_of(oof: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    """Prompt group (data.folds.prompt_groups, stored in oof.parquet's ``group`` column) per id; one group per row when
    unknown — the bootstrap then resamples rows."""
    if "group" in oof.columns:
        m = ids.astype(str).to_frame("id").merge(oof[["id", "group"]], on="id", how="left")
        if m["group"].notna().all():
            return m["group"].to_numpy(dtype=np.int64)
    return np.arange(len(ids))


def per_source_rows(oof: pd.DataFrame, groups: np.ndarray, seed: int = 0) -> list[dict]:
    """Per source: uniform, the class prior of all training rows, the source's own prior (an oracle: test rows carry no
    source) and every candidate, out of fold, with 95% prompt-bootstrap intervals."""
    rows = []
    y_all = oof["label"].to_numpy()
    for src in sorted(oof["source"].astype(str).unique()):
        m = (oof["source"].astype(str) == src).to_numpy()
        y, g = y_all[m], groups[m]
        own = np.bincount(y, minlength=3)[:3] + 1.0
        answers = [("uniform (1/3 each)", np.full((len(y), 3), 1 / 3)),
                   ("class prior of this source (oracle)", np.tile(own / own.sum(), (len(y), 1)))]
        for name, label in CANDIDATE_LABELS.items():
            cols = prob_columns(name)
            if all(c in oof.columns for c in cols):
                answers.append((label, oof.loc[m, cols].to_numpy(dtype=np.float64)))
        rows += [{**interval_row(label, y, probs, g, seed), "source": src} for label, probs in answers]
    return rows


def provenance_rows(oof: pd.DataFrame, seed: int = 0) -> list[dict]:
    """Per provenance (oof / heldout): the stackers and students, out of fold, with 95% prompt-bootstrap intervals;
    the provenance in the rows' ``source`` key."""
    y = oof["label"].to_numpy()
    rows = []
    for prov in sorted(oof["provenance"].unique()):
        m = (oof["provenance"] == prov).to_numpy()
        groups = prompt_groups_of(oof, oof.loc[m, "id"])
        for name in ("stacker", "stacker_single", "log_pool", "log_pool_single", "student", "student_single"):
            cols = prob_columns(name)
            if all(c in oof.columns for c in cols):
                probs = oof.loc[m, cols].to_numpy(dtype=np.float64)
                rows.append({**interval_row(CANDIDATE_LABELS[name], y[m], probs, groups, seed), "source": prov})
    return rows


def format_selection(tables: dict[str, list[dict]], winners: dict[str, str]) -> str:
    """Per student mode: the candidates by OOF log loss, each with its interval and its difference to the winner."""
    md = []
    for mode, rows in tables.items():
        md += [f"### Student mode '{mode}': chosen `{winners[mode]}`", "",
               "| candidate | OOF log loss | 95% interval | minus the winner (95% interval) |", "|---|---:|---|---|"]
        for r in rows:
            d = r["diff_vs_winner"]
            ds = "—" if d is None else f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" + \
                ("" if verdict(d) == "b better" else " (not resolved)")
            md.append(f"| {CANDIDATE_LABELS.get(r['name'], r['name'])} | {r['log_loss']:.4f} | "
                      f"[{r['lo']:.4f}, {r['hi']:.4f}] | {ds} |")
        md.append("")
    return "\n".join(md)


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """One-vs-rest over all classes: per probability bin, mean predicted probability, observed frequency, count."""
    y = np.asarray(labels, dtype=np.int64)
    onehot = np.eye(3)[y].ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    df = pd.DataFrame({"bin": bins, "p": p, "y": onehot}).groupby("bin")
    return df.agg(mean_pred=("p", "mean"), observed=("y", "mean"), count=("y", "size")).reset_index()


def plot_reliability(labels: np.ndarray, before: np.ndarray, after: np.ndarray, path: Path, title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    for name, probs, style in (("before calibration", before, "o-"), ("after calibration", after, "s-")):
        b = reliability_bins(labels, probs)
        ax.plot(b["mean_pred"], b["observed"], style, label=f"{name} (log loss {log_loss(labels, probs):.4f})")
    ax.set_xlabel("predicted probability (all classes, one-vs-rest)")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path, dpi=90)


def plot_importance(importance: pd.DataFrame, path: Path, title: str, top: int = 25) -> None:
    imp = importance.head(top)
    bar_chart(imp["feature"].tolist(), imp["gain"].tolist(), path, xlabel="total gain", title=title)


def write_report(workdir: str | Path, importances: dict[str, pd.DataFrame], temperatures: dict[str, dict],
                 notes: list[str], *, tables: dict[str, list[dict]] | None = None,
                 winners: dict[str, str] | None = None, seed: int = 0) -> tuple[Path, list[dict]]:
    """Write ``<workdir>/stacking/report.md`` + PNGs; return (path, stage rows)."""
    out = Path(workdir) / "stacking"
    oof, _ = read_keyed_table(out / "oof.parquet")
    rows = stage_rows(workdir, winners, seed, oof=oof)
    y = oof["label"].to_numpy()
    md = ["# Stacking report", "", *[f"- {n}" for n in notes], "",
          "## Log loss per candidate (out-of-fold, every stacker row; 95% bootstrap intervals over prompts)", "",
          format_table(rows, counts=True), ""]
    if tables and winners:
        md += ["## Selection per student mode (the rule: `stacking.select_rule` in the notes above)", "",
               format_selection(tables, winners)]
    if "source" in oof.columns and oof["source"].nunique() > 1:
        per_source = per_source_rows(oof, prompt_groups_of(oof, oof["id"]), seed)
        md += ["## Per source (out-of-fold)", "", format_table(per_source, counts=True), ""]
    if "provenance" in oof.columns and oof["provenance"].nunique() > 1:
        md += ["## Per provenance (oof: a fold student's prediction; heldout: mean of the fold students, rows "
               "data.max_rows left out)", ""]
        table = format_table(provenance_rows(oof, seed), counts=True)
        md += [table.replace("| source |", "| provenance |", 1), ""]
    md += ["## Temperature", ""]
    for name, t in temperatures.items():
        md.append(f"- {name}: T = {t['temperature']:.4f} (log loss {t['log_loss_before']:.4f} → "
                  f"{t['log_loss_after']:.4f} on {t['n']} OOF rows; the OOF above uses temperatures fitted on the "
                  "other folds)")
    md.append("")
    for name in temperatures:
        raw, cal = prob_columns(f"{name}_raw"), prob_columns(name)
        if name.startswith(("stacker", "features")) and all(c in oof.columns for c in raw + cal):
            png = f"reliability_{name}.png"
            plot_reliability(y, oof[raw].to_numpy(), oof[cal].to_numpy(), out / png,
                             f"{name}: reliability before/after temperature")
            md += [f"## Reliability diagram: {name}", "", f"![reliability {name}]({png})", ""]
    for name, imp in importances.items():
        png = f"importance_{name}.png"
        plot_importance(imp, out / png, f"{name}: feature importance (gain, top 25)")
        md += [f"## Feature importance: {name} (gain, top 25)", "", f"![importance {name}]({png})", "",
               "| feature | gain |", "|---|---:|"]
        md += [f"| {r.feature} | {r.gain:.1f} |" for r in imp.head(25).itertuples()]
        md.append("")
    path = atomic_write_text(out / "report.md", "\n".join(md))
    return path, rows
