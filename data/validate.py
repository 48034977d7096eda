"""`arena-kd validate-data`: read and validate a pair file (:mod:`arena_kd.data.readers`), print its report:
rows, labels, turns, sources, repaired / flagged counts, character-length percentiles.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.common.errors import UserError
from arena_kd.common.keys import CLASS_NAMES, FORMATS
from arena_kd.data.folds import label_problem
from arena_kd.data.readers import read_pairs

# --------------------------------------------------------------------------- report


def _lengths(df: pd.DataFrame, col: str) -> np.ndarray:
    return np.fromiter((sum(len(t) for t in turns) for turns in df[col]), dtype=np.int64, count=len(df))


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Figures printed by validate-data: rows, labels, turns, repaired/flagged counts, char-length percentiles."""
    stats = df.attrs.get("validation", {})
    labels = df["label"]
    label_counts = {name: int((labels == k).sum()) for k, name in enumerate(CLASS_NAMES)}
    label_counts["unlabelled"] = int(labels.isna().sum())
    turns = Counter(len(t) for t in df["prompt"])
    pct = (5, 25, 50, 75, 95, 99, 100)
    lengths = {}
    for col in ("prompt", "response_a", "response_b"):
        ls = _lengths(df, col)
        lengths[col] = {f"p{p}": int(np.percentile(ls, p)) if len(ls) else 0 for p in pct}
    return {
        "rows": len(df),
        "labels": label_counts,
        "turns": dict(sorted(turns.items())),
        "sources": dict(Counter(df["source"])),
        "repaired": {k: stats.get(k, 0) for k in ("null_turns", "rows_with_null_turns", "repaired_unicode")},
        "flagged": {k: stats.get(k, 0) for k in ("empty_responses", "empty_prompts")},
        "examples": stats.get("examples", {}),
        "char_lengths": lengths,
        "not_trainable": label_problem(labels),
    }


def format_report(path, summary: dict[str, Any]) -> str:
    n = summary["rows"]
    problem = summary.get("not_trainable")
    lines = [f"{path}: {n} rows (valid data, NOT trainable: {problem})" if problem else f"{path}: {n} rows (valid)"]
    lab = summary["labels"]
    lines.append("labels: " + ", ".join(f"{k} {v} ({v / n:.1%})" if n else f"{k} {v}" for k, v in lab.items()))
    lines.append("turns per row: " + ", ".join(f"{k}: {v}" for k, v in summary["turns"].items()))
    lines.append("sources: " + ", ".join(f"{k}: {v}" for k, v in summary["sources"].items()))
    r, f = summary["repaired"], summary["flagged"]
    lines.append(
        f"repaired: {r['null_turns']} null turns kept as empty (in {r['rows_with_null_turns']} rows), "
        f"{r['repaired_unicode']} strings with invalid unicode replaced by U+FFFD"
    )
    lines.append(f"flagged: {f['empty_responses']} rows with an empty response, "
                 f"{f['empty_prompts']} rows with an empty prompt")
    for kind, ex in summary["examples"].items():
        if ex:
            lines.append(f"  e.g. {kind}: {'; '.join(ex)}")
    lines.append("char lengths (all turns):")
    cols = list(next(iter(summary["char_lengths"].values())).keys())
    lines.append(f"  {'':<11}" + "".join(f"{c:>9}" for c in cols))
    for col, ps in summary["char_lengths"].items():
        lines.append(f"  {col:<11}" + "".join(f"{v:>9}" for v in ps.values()))
    return "\n".join(lines)


def validate_data_report(path: str, fmt: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Read + validate a data file and print its report. Malformed input raises UserError (CLI exit 2)."""
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r} ({'|'.join(FORMATS)})")
    df = read_pairs(path, fmt=fmt, seed=seed)
    summary = summarize(df)
    print(format_report(path, summary))
    return summary
