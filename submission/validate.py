"""Validate the submission frame and write it atomically.

Rules (checked before anything is written, so a refused frame never touches an existing file):
every expected test id exactly once, columns ``id`` + ``arena_kd.LABELS``, three finite
probabilities per row, each in [0, 1], summing to 1 within ``SUM_TOLERANCE``. Valid rows are
clipped to ``[eps, 1 - eps]`` and renormalised (so every value is strictly inside (0, 1)) and
put in the expected id order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from arena_kd.common.errors import UserError, data_error
from arena_kd.common.io import atomic_write_csv
from arena_kd.common.keys import LABELS

SUBMISSION_COLUMNS = ("id", *LABELS)
SUM_TOLERANCE = 1e-3
"""A row whose probabilities sum further than this from 1 is refused, not silently renormalised."""


def clip_and_renormalise(probs: np.ndarray, eps: float) -> np.ndarray:
    """probs [n, 3] -> rows clipped to [eps, 1-eps] and renormalised to sum 1 (float64)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return p / p.sum(axis=1, keepdims=True)


def valid_rows(probs: np.ndarray) -> np.ndarray:
    """bool[n]: rows of probs [n, 3] that pass validation (finite, within [0, 1], summing to 1)."""
    p = np.asarray(probs, dtype=np.float64)
    ok = np.isfinite(p).all(axis=1) & ((p >= 0) & (p <= 1)).all(axis=1)
    with np.errstate(invalid="ignore"):
        ok &= np.abs(p.sum(axis=1) - 1.0) <= SUM_TOLERANCE
    return ok


def validate_submission(df: pd.DataFrame, expected_ids: Sequence[str], eps: float,
                        name: str = "submission") -> pd.DataFrame:
    """Checked, clipped, renormalised copy of ``df`` in the order of ``expected_ids``.

    Raises :class:`UserError` naming ``name``, the row and the column of the first problem.
    """
    missing_cols = [c for c in SUBMISSION_COLUMNS if c not in df.columns]
    if missing_cols:
        raise data_error(name, column=missing_cols[0], problem="column is missing")
    ids = df["id"].astype(str).reset_index(drop=True)
    dup = ids.duplicated()
    if dup.any():
        r = int(np.flatnonzero(dup.to_numpy())[0])
        raise data_error(name, row=r, column="id", problem=f"id '{ids[r]}' appears more than once")
    expected = pd.Index([str(i) for i in expected_ids])
    if expected.duplicated().any():
        first = expected[expected.duplicated()][0]
        raise UserError(f"{name}: the expected test ids contain duplicates (e.g. '{first}')")
    have = pd.Index(ids)
    absent = expected.difference(have, sort=False)
    if len(absent):
        raise data_error(name, column="id", problem=f"{len(absent)} test id(s) missing, e.g. '{absent[0]}'")
    extra = have.difference(expected, sort=False)
    if len(extra):
        r = int(have.get_loc(extra[0]))
        raise data_error(name, row=r, column="id", problem=f"id '{extra[0]}' is not a test id")

    p = df[list(LABELS)].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(p)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        raise data_error(name, row=r, column=LABELS[c], problem=f"probability is {p[r, c]} (not finite)")
    out_of_range = (p < 0) | (p > 1)
    if out_of_range.any():
        r, c = map(int, np.argwhere(out_of_range)[0])
        raise data_error(name, row=r, column=LABELS[c], problem=f"probability {p[r, c]:.6g} is outside [0, 1]")
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        r = int(np.flatnonzero(off)[0])
        raise data_error(name, row=r, column=",".join(LABELS), problem=f"probabilities sum to {sums[r]:.6g}, not 1")

    out = pd.DataFrame({"id": ids})
    out[list(LABELS)] = clip_and_renormalise(p, eps)
    return out.set_index("id").loc[expected].reset_index()


def write_submission(path: str | Path, df: pd.DataFrame, expected_ids: Sequence[str], eps: float) -> pd.DataFrame:
    """Validate ``df`` against ``expected_ids`` and write it atomically to ``path``; returns what was written."""
    checked = validate_submission(df, expected_ids, eps, name=str(path))
    atomic_write_csv(path, checked, float_format="%.10g")
    return checked
