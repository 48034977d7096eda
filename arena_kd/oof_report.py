"""The report's out-of-fold comparisons: every training row, scored by a model that never trained on its question, so
they rest on ~4x the test split's rows and ~4x its MT-Bench questions — (b) the distilled fold students against their
hard-label twins, (c) the stacker candidates using the student against the features-only stacker, and the nested
soft-label ablation. Paired differences with 95% intervals over prompts (common.metrics); :mod:`arena_kd.report`
places the sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.common.config import PipelineConfig
from arena_kd.common.io import read_keyed_table
from arena_kd.common.keys import LOGIT_COLUMNS
from arena_kd.common.metrics import log_loss, log_loss_difference, softmax, verdict
from arena_kd.stacking.candidates import STUDENT_STACKERS
from arena_kd.stacking.report import prob_columns


def oof_pair(cfg: PipelineConfig, path_a: Path, path_b: Path) -> dict[str, np.ndarray] | None:
    """Two students' OOF probabilities on every training row: {y, a, b, groups, sources (None when a row has no
    source)}; None when a file is missing."""
    from arena_kd.data.folds import prompt_groups
    from arena_kd.kfold.training_data import load_training_data

    if not (path_a.is_file() and path_b.is_file()):
        return None
    frame = load_training_data(cfg).frame
    probs = []
    for p in (path_a, path_b):
        df = frame[["id"]].merge(read_keyed_table(p)[0], on="id", how="left")
        probs.append(softmax(df[list(LOGIT_COLUMNS)].to_numpy(dtype=np.float64)))
    has_source = "source" in frame and frame["source"].notna().all()
    return {"y": frame["label"].to_numpy(dtype=np.int64), "a": probs[0], "b": probs[1],
            "groups": prompt_groups(frame),
            "sources": frame["source"].astype(str).to_numpy() if has_source else None}


def twin_pair(cfg: PipelineConfig, hard_cfg: PipelineConfig) -> dict[str, np.ndarray] | None:
    """:func:`oof_pair` of the distilled fold students and their hard-label twins (the twin has fold students when
    student.final=fold_ensemble); read once per report, for the (b) table and the projection."""
    return oof_pair(cfg, cfg.workdir_path / "student" / "oof.parquet",
                    hard_cfg.workdir_path / "student" / "oof.parquet")


def _compare(pair: dict[str, np.ndarray], seed: int, by_source: bool) -> dict[str, dict[str, Any]]:
    """The pair's log losses and paired difference a − b with a prompt-bootstrap 95% interval: {"all": {...}} plus
    one entry per source when ``by_source`` and the rows carry one."""
    scopes = {"all": np.ones(len(pair["y"]), dtype=bool)}
    if by_source and pair["sources"] is not None:
        scopes.update({s: pair["sources"] == s for s in sorted(set(pair["sources"].tolist()))})
    return _paired_by_scope(pair["y"], pair["a"], pair["b"], pair["groups"], scopes, seed)


def _paired_by_scope(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, groups: np.ndarray,
                     scopes: dict[str, np.ndarray], seed: int) -> dict[str, dict[str, Any]]:
    """{scope: {rows, a, b, diff, lo, hi}}: log losses of ``pa`` and ``pb`` on each scope's rows (bool masks) and
    their paired difference a − b with its 95% prompt-bootstrap interval."""
    out = {}
    for name, m in scopes.items():
        d = log_loss_difference(y[m], pa[m], pb[m], groups[m], seed=seed)
        out[name] = {"rows": int(m.sum()), "a": log_loss(y[m], pa[m]), "b": log_loss(y[m], pb[m]),
                     "diff": d["mean"], "lo": d["lo"], "hi": d["hi"]}
    return out


def nested_oof_comparison(cfg: PipelineConfig, nested_cfg: PipelineConfig) -> dict[str, Any] | None:
    """Student OOF log loss with plain vs nested teacher soft labels on the same rows, paired, prompt-bootstrap
    interval."""
    plain, nested = (nested_cfg, cfg) if cfg.student.distill.nested else (cfg, nested_cfg)
    pair = oof_pair(cfg, *(c.workdir_path / "student" / "oof.parquet" for c in (nested, plain)))
    if pair is None:
        return None
    d = _compare(pair, cfg.seed, by_source=False)["all"]
    return {"rows": d["rows"], "plain": d["b"], "nested": d["a"], "diff": d["diff"], "lo": d["lo"], "hi": d["hi"]}


def twin_oof_comparison(pair: dict[str, np.ndarray] | None, seed: int) -> dict[str, Any] | None:
    """The distilled fold students vs their hard-label twins out of fold (``pair`` from :func:`twin_pair`), on every
    training row and per source: (b) on ~4x the test split's rows; None without the pair."""
    return None if pair is None else _compare(pair, seed, by_source=True)


TWIN_WORDS = {"a better": "distilled better", "b better": "twin better",
              "not resolved at this size": "not resolved at this size"}


def twin_section(cmp: dict[str, Any]) -> str:
    lines = ["| rows | n | distilled | hard twin | distilled − twin [95%] | |", "|---|---|---|---|---|---|"]
    for name, d in cmp.items():
        lines.append(f"| {name} | {d['rows']} | {d['a']:.4f} | {d['b']:.4f} | {d['diff']:+.4f} [{d['lo']:+.4f}, "
                     f"{d['hi']:+.4f}] | {TWIN_WORDS[verdict(d)]} |")
    return ("### (b) out of fold: the distilled fold students vs their hard-label twins\n\nEvery training row, "
            "scored by the fold student that did not train on its question (unseen questions, as on the test "
            "split); paired differences, 95% intervals over prompts.\n\n" + "\n".join(lines) + "\n")


def nested_section(cmp: dict[str, Any]) -> str:
    resolved = verdict(cmp) != "not resolved at this size"
    return ("### Nested teacher soft labels (fold k's student taught by teachers that never saw fold k)\n\n"
            f"Student OOF log loss on the {cmp['rows']} LLM rows: plain {cmp['plain']:.4f}, nested "
            f"{cmp['nested']:.4f}; nested minus plain {cmp['diff']:+.4f}, 95% interval [{cmp['lo']:+.4f}, "
            f"{cmp['hi']:+.4f}] ({'resolved' if resolved else 'not resolved at this size'}; the plain OOF is "
            "expected to look slightly better because its teachers saw the scored fold). The held-out test "
            "difference through the stacker is the 'nested teacher soft labels' line above. The default stays the "
            "cheaper plain labels unless the test interval shows nested ahead.\n")


STUDENT_CANDIDATES = {"stacker": "LightGBM stacker (features + student logits)",
                      "log_pool": "log pool (features-only + student)"}
"""The table's label of each of stacking.candidates.STUDENT_STACKERS."""


def read_stacker_oof(workdir: Path) -> pd.DataFrame | None:
    """stacking/oof.parquet (the stacker's cross-fitted OOF, one column per candidate and class) or None; read once
    per report, for the (c) table and the projection."""
    path = Path(workdir) / "stacking" / "oof.parquet"
    return read_keyed_table(path)[0] if path.is_file() else None


def stacker_oof_comparison(oof: pd.DataFrame | None, seed: int = 0) -> dict[str, dict[str, dict[str, Any]]] | None:
    """(c) out of fold: each TTA candidate using the student (``oof`` from :func:`read_stacker_oof`, calibrated as
    selected) minus the features-only stacker on every stacker row and per source: {candidate: {"all" | source:
    {rows, a, b, diff, lo, hi}}}; None without a stacker OOF holding the features-only stacker and one such
    candidate."""
    if oof is None:
        return None
    cols = {n: prob_columns(n) for n in ("features_only", *STUDENT_STACKERS)}
    have = [n for n in STUDENT_STACKERS if all(c in oof.columns for c in cols[n])]
    if not have or not all(c in oof.columns for c in cols["features_only"]):
        return None
    y = oof["label"].to_numpy(dtype=np.int64)
    groups = oof["group"].to_numpy()
    src = oof["source"].astype(str).to_numpy()
    scopes = {"all": np.ones(len(y), dtype=bool)} | {s: src == s for s in sorted(set(src.tolist()))}
    base = oof[cols["features_only"]].to_numpy(dtype=np.float64)
    return {name: _paired_by_scope(y, oof[cols[name]].to_numpy(dtype=np.float64), base, groups, scopes, seed)
            for name in have}


CANDIDATE_WORDS = {"a better": "student candidate better", "b better": "features-only better",
                   "not resolved at this size": "not resolved at this size"}


def stacker_section(cmp: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| candidate | rows | n | candidate | features-only | candidate − features-only [95%] | |",
             "|---|---|---|---|---|---|---|"]
    for name, scopes in cmp.items():
        for scope, d in scopes.items():
            lines.append(f"| {STUDENT_CANDIDATES[name]} | {scope} | {d['rows']} | {d['a']:.4f} | {d['b']:.4f} | "
                         f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] | {CANDIDATE_WORDS[verdict(d)]} |")
    return ("### (c) out of fold: the stacker candidates using the student vs the features-only stacker\n\nEvery "
            "stacker row, each candidate scored by models fitted on the other stacker folds (temperatures and pool "
            "weights cross-fitted too); paired differences, 95% intervals over prompts. The selection "
            "(`stacking.select_rule`) reads the same numbers.\n\n" + "\n".join(lines) + "\n")
