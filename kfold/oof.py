"""Offline teacher logits (computed elsewhere: a cluster, vLLM, another repo) and coverage checks.

Accepted files: Parquet or CSV with an ``id`` column and three score columns, in class order
A wins / B wins / tie, under any of these names:
  logit_a, logit_b, logit_tie                          (logits, or probabilities — detected)
  winner_model_a, winner_model_b, winner_tie           (Kaggle submission layout: probabilities)
  prob_a, prob_b, prob_tie | p_a, p_b, p_tie           (probabilities)
Probabilities are detected (every value in [0, 1] and every row summing to 1 within 1e-3) and
turned into log-probabilities; logits are kept as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.errors import UserError, data_error
from arena_kd.common.keys import LABELS, LOGIT_COLUMNS

# probability column sets an offline file may use instead of LOGIT_COLUMNS, each in class order
PROB_NAMES = (LABELS, ("prob_a", "prob_b", "prob_tie"), ("p_a", "p_b", "p_tie"))
PROB_EPS = 1e-7


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: teacher logits file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype={"id": str})
    except Exception as exc:  # unreadable file: one line, no traceback
        raise UserError(f"{path}: cannot read teacher logits ({type(exc).__name__}: {exc})") from None
    raise UserError(f"{path}: teacher logits must be .parquet or .csv, got '{suffix}'")


def looks_like_probabilities(values: np.ndarray) -> bool:
    """True when every entry is in [0, 1] and every row sums to 1 (within 1e-3)."""
    return bool(((values >= 0) & (values <= 1)).all() and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))


def read_teacher_logits(path: str | Path) -> tuple[pd.DataFrame, str]:
    """Read an offline teacher file → (DataFrame[id, *LOGIT_COLUMNS] float32, kind 'logits'|'probabilities')."""
    path = Path(path)
    df = _read_table(path)
    if "id" not in df.columns:
        raise data_error(path, column="id", problem="missing; teacher files need an id column")
    names = next((n for n in (LOGIT_COLUMNS, *PROB_NAMES) if all(c in df.columns for c in n)), None)
    if names is None:
        need = f"need columns {', '.join(LOGIT_COLUMNS)} (or winner_model_a/b/tie probabilities)"
        raise data_error(path, column=LOGIT_COLUMNS[0], problem=f"{need}; found {', '.join(map(str, df.columns))}")
    ids = df["id"].astype(str)
    dup = ids.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise data_error(path, row=row + 1, column="id", problem=f"duplicate id '{ids.iloc[row]}'")
    values = np.empty((len(df), 3), dtype=np.float64)
    for j, c in enumerate(names):
        col = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(col)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise data_error(path, row=row + 1, column=c, problem=f"not a finite number ({df[c].iloc[row]!r})")
        values[:, j] = col
    is_prob = names != LOGIT_COLUMNS or looks_like_probabilities(values)
    if is_prob:
        if names != LOGIT_COLUMNS and not looks_like_probabilities(values):
            off = ~np.isclose(values.sum(axis=1), 1.0, atol=1e-3) | (values < 0).any(axis=1) | (values > 1).any(axis=1)
            row = int(np.flatnonzero(off)[0])
            raise data_error(path, row=row + 1, column=names[0],
                             problem="probabilities must be in [0, 1] and sum to 1 per row")
        values = np.clip(values, PROB_EPS, 1.0)
        values = np.log(values / values.sum(axis=1, keepdims=True))
    out = pd.DataFrame({"id": ids.to_numpy()})
    for j, c in enumerate(LOGIT_COLUMNS):
        out[c] = values[:, j].astype(np.float32)
    return out, "probabilities" if is_prob else "logits"


def check_coverage(path: str | Path, have_ids: pd.Series, need_ids: pd.Series, what: str = "training id") -> None:
    """UserError with the count and a few examples when some ``need_ids`` are absent from ``have_ids``."""
    missing = pd.Index(need_ids.astype(str)).difference(pd.Index(have_ids.astype(str)))
    if len(missing):
        ex = ", ".join(sorted(missing)[:5])
        raise UserError(f"{path}: {len(missing)} of {len(need_ids)} {what}s have no teacher logits (e.g. {ex})")


def oof_logits(table: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    """float64 [n,3] LOGIT_COLUMNS of an id-keyed table for ``ids`` in that order (NaN rows where an id is absent)."""
    rows = pd.DataFrame({"id": ids.to_numpy()}).merge(table, on="id", how="left")
    return rows[list(LOGIT_COLUMNS)].to_numpy(dtype=np.float64)


def align_logits(path: str | Path, table: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    """float32 [n,3] logits for ``ids`` in that order (coverage checked first)."""
    check_coverage(path, table["id"], ids)
    indexed = table.set_index("id")
    return indexed.loc[ids.astype(str).to_numpy(), list(LOGIT_COLUMNS)].to_numpy(dtype=np.float32)
