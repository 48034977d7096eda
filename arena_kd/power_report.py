"""The report's projection: given the effect each goal shows out of fold, how likely was the test split to resolve it?

Issue 21's goals are judged on the sample's test split, whose MT-Bench rows come from 9 questions; an unresolved
verdict there can mean a missing effect or a split too small to see one. The out-of-fold rows (every training row,
scored by a model that never saw its question: the fold students' OOF, the stacker's cross-fitted OOF) measure the
effect and its spread per source; :mod:`arena_kd.common.resolving_power` projects them onto the test split's own rows
and prompts per source. One line per goal line of the report that has an out-of-fold twin:

  (b) distilled − twin        student/oof.parquet vs ablation_hard_student/student/oof.parquet
  (b) distilled − prior       stacking/oof.parquet: the student's TTA probabilities before temperature vs the prior
                              of the other stacker folds
  (c) student candidate − features-only   stacking/oof.parquet, calibrated as selected; the candidate with the lower
                              OOF log loss, as the report's goal (c) takes it
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from arena_kd.common.metrics import row_log_loss
from arena_kd.common.resolving_power import Components, project, variance_components
from arena_kd.heldout import DISTILLED, FEATURES_ONLY, HARD, PRIOR, STUDENT_STACKER, Evaluation
from arena_kd.stacking.candidates import STUDENT_STACKERS, best_student_stacker
from arena_kd.stacking.report import prob_columns

RowDiffs = tuple[np.ndarray, np.ndarray, np.ndarray | None]
"""(per-row log-loss difference a − b float[n], prompt groups [n], sources [n] or None)"""


def _stacker_diffs(oof: pd.DataFrame | None) -> dict[tuple[str, str], RowDiffs]:
    """(b) against the prior and (c), from the stacker's cross-fitted OOF (module doc)."""
    if oof is None:
        return {}
    y, groups = oof["label"].to_numpy(dtype=np.int64), oof["group"].to_numpy()
    sources = oof["source"].astype(str).to_numpy() if "source" in oof else None
    loss = {}  # per-row log loss of each model the goals compare, where the OOF holds it
    for name in ("student_raw", "prior", "features_only", *STUDENT_STACKERS):
        cols = prob_columns(name)
        if all(c in oof.columns for c in cols):
            loss[name] = row_log_loss(y, oof[cols].to_numpy(dtype=np.float64))
    out = {}
    if "student_raw" in loss and "prior" in loss:
        out[(DISTILLED, PRIOR)] = (loss["student_raw"] - loss["prior"], groups, sources)
    best = best_student_stacker({n: float(loss[n].mean()) for n in STUDENT_STACKERS if n in loss})
    if best is not None and "features_only" in loss:
        out[(STUDENT_STACKER, FEATURES_ONLY)] = (loss[best] - loss["features_only"], groups, sources)
    return out


def oof_differences(twin: dict[str, np.ndarray] | None, stacker_oof: pd.DataFrame | None
                    ) -> dict[tuple[str, str], RowDiffs]:
    """{(a, b) as the report's goal lines name them: the out-of-fold per-row differences} from what was written:
    ``twin`` (oof_report.twin_pair) and ``stacker_oof`` (oof_report.read_stacker_oof), each None when absent."""
    out = _stacker_diffs(stacker_oof)
    if twin is not None:
        out[(DISTILLED, HARD)] = (row_log_loss(twin["y"], twin["a"]) - row_log_loss(twin["y"], twin["b"]),
                                  twin["groups"], twin["sources"])
    return out


def _parts(diff: RowDiffs, source: str | None, ev: Evaluation) -> list[tuple[Components, int, int]] | None:
    """[(OOF components, test rows, test prompts)] per source of the scope: ``source`` alone, or for the mix every
    test source (when the OOF rows carry each of them), else the mix as one; None when a part cannot be measured."""
    d, groups, sources = diff
    masks = ev.source_masks()
    if source is not None:
        scope = {source: masks.get(source)}
    elif masks and sources is not None and set(masks) <= set(sources.tolist()):
        scope = masks
    else:
        scope = {None: np.ones(len(ev.labels), dtype=bool)}
    parts = []
    for s, test_rows in scope.items():
        oof_rows = np.ones(len(d), dtype=bool) if s is None else (None if sources is None else sources == s)
        if test_rows is None or oof_rows is None or oof_rows.sum() < 2:
            return None
        parts.append((variance_components(d[oof_rows], groups[oof_rows]), int(test_rows.sum()),
                      len(np.unique(ev.groups[test_rows]))))
    return parts


def projections(goal_lines: list[dict[str, Any]], ev: Evaluation, diffs: dict[tuple[str, str], RowDiffs]
                ) -> list[dict[str, Any]]:
    """One row per goal line with an out-of-fold twin in ``diffs``: the OOF effect on the line's scope, the test
    split's rows and prompts there, and the projection (common.resolving_power), beside the line's own verdict.
    A mix is projected source by source when both the OOF rows and the test rows carry sources."""
    out = []
    for line in goal_lines:
        diff = diffs.get((line["a"], line["b"]))
        scope = line["scope"]
        source = scope[len("source "):] if scope.startswith("source ") else None
        parts = None if diff is None else _parts(diff, source, ev)
        if not parts:
            continue
        p = project(parts)
        d, _, srcs = diff
        keep = np.ones(len(d), dtype=bool) if source is None else srcs == source
        out.append({"goal": line["goal"], "what": line["what"], "scope": scope, "oof_diff": float(d[keep].mean()),
                    "oof_rows": int(keep.sum()), "test_rows": p.rows, "test_prompts": p.groups,
                    **{k: v for k, v in p.to_dict().items() if k not in ("rows", "groups")},
                    "test_diff": line["diff"], "test_lo": line["lo"], "test_hi": line["hi"],
                    "test_answer": line["answer"]})
    return out


def _pct(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{100 * x:.0f}%"


def _times(x: float) -> str:
    return "—" if not np.isfinite(x) else (f"{x:.1f}×" if x < 100 else f"{x:.0f}×")


def power_section(rows: list[dict[str, Any]]) -> str:
    lines = ["| goal | scope | OOF difference (rows) | test rows (prompts) | expected on the test split ± 95% | "
             "chance to resolve | split ×, for 80% | the test split's verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        got = "—" if r["test_lo"] is None else f"{r['test_diff']:+.4f} [{r['test_lo']:+.4f}, {r['test_hi']:+.4f}]"
        lines.append(f"| ({r['goal']}) {r['what']} | {r['scope']} | {r['oof_diff']:+.4f} ({r['oof_rows']}) | "
                     f"{r['test_rows']} ({r['test_prompts']}) | {r['expected']:+.4f} ± {r['half_width']:.4f} | "
                     f"{_pct(r['chance'])} | {_times(r['scale_for_80'])} | {got}: {r['test_answer']} |")
    return ("### Could the test split resolve it? A projection from the out-of-fold rows\n\nEach goal's effect and "
            "its spread (between prompts and within one) measured on the training rows out of fold, projected onto "
            "the test split's own rows and prompts per source (common/resolving_power.py): the expected difference, "
            "the expected half-width of its 95% interval, the chance that the interval excludes zero, and how many "
            "times larger the split (every source's rows and prompts alike) would have to be for an 80% chance. "
            "Assumes the out-of-fold effect holds on the test rows; a low chance says an unresolved verdict is the "
            "split's size, a high one with an unresolved verdict says the effect did not carry over.\n\n"
            + "\n".join(lines) + "\n")
