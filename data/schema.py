"""The canonical pair table every reader produces and every stage consumes.

Columns (pandas DataFrame, one row per pair):
  id          str            unique row id (Kaggle ids are ints; kept as strings so joins never drift)
  prompt      list[str]      user turns, oldest first
  response_a  list[str]      model A's turns (same count as prompt)
  response_b  list[str]      model B's turns
  label       Int8 (nullable) 0 = A wins, 1 = B wins, 2 = tie; <NA> when unlabelled
  source      str            where the row came from (file stem or dataset name)
  model_a     str | None     model names when known
  model_b     str | None
"""

from __future__ import annotations

import pandas as pd

CANONICAL_COLUMNS = ("id", "prompt", "response_a", "response_b", "label", "source", "model_a", "model_b")
TURN_COLUMNS = ("prompt", "response_a", "response_b")
LABEL_NAMES = ("model_a", "model_b", "tie")


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


def swap_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A/B swap: exchange responses and model names, swap the label (tie stays tie)."""
    out = df.copy()
    out["response_a"], out["response_b"] = df["response_b"], df["response_a"]
    out["model_a"], out["model_b"] = df["model_b"], df["model_a"]
    lab = df["label"]
    out["label"] = lab.where(lab.isna() | (lab == 2), 1 - lab).astype("Int8")
    return out
