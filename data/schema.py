"""The canonical pair table every reader produces and every stage consumes.

Columns (pandas DataFrame, one row per pair):
  id          str            unique row id (Kaggle ids are ints; kept as strings so joins never drift)
  prompt      list[str]      user turns, oldest first
  response_a  list[str]      model A's turns (same count as prompt)
  response_b  list[str]      model B's turns
  label       Int8 (nullable) 0 = A wins, 1 = B wins, 2 = tie; <NA> when unlabelled
  source      str            where the row came from: the file's `source` column when it has one, else the file stem
  model_a     str | None     model names when known
  model_b     str | None
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_kd.common.keys import SWAP_PERMUTATION

CANONICAL_COLUMNS = ("id", "prompt", "response_a", "response_b", "label", "source", "model_a", "model_b")
TURN_COLUMNS = ("prompt", "response_a", "response_b")


def make_frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Normalise rows into the canonical column set, order and dtypes."""
    df = pd.DataFrame(rows).copy()
    for col in CANONICAL_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df = df[list(CANONICAL_COLUMNS)]
    df["id"] = df["id"].astype(str)
    df["label"] = pd.array(df["label"].tolist(), dtype="Int8")
    return df.reset_index(drop=True)


def swap_logits(x):
    """A copy of a logit/probability array of shape (..., 3) with the A and B entries of the last axis exchanged
    (:data:`arena_kd.common.keys.SWAP_PERMUTATION`); non-float input becomes float64."""
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr[..., list(SWAP_PERMUTATION)]


def swap_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A/B swap: exchange responses, model names and every other ``<x>_a``/``<x>_b`` column pair; swap the label
    (tie stays tie) and ``teacher_logits`` (index 0 <-> 1 of the last axis, shapes (3,) or (k, 3))."""
    out = df.copy()
    for col in df.columns:
        if isinstance(col, str) and col.endswith("_a") and (col[:-2] + "_b") in df.columns:
            other = col[:-2] + "_b"
            out[col], out[other] = df[other].to_numpy(), df[col].to_numpy()
    if "label" in df.columns:
        lab = df["label"].astype("Int8")
        out["label"] = lab.where(lab.isna() | (lab == 2), 1 - lab).astype("Int8")
    if "teacher_logits" in df.columns:
        out["teacher_logits"] = [None if v is None else swap_logits(v) for v in df["teacher_logits"]]
    return out
