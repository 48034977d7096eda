"""Readers: every supported pair file -> the canonical table of :mod:`arena_kd.data.schema`.

A file is read as records by its container (:mod:`arena_kd.data.containers`: CSV, JSON lines, JSON, Parquet), the
records become pairs by its layout (:mod:`arena_kd.data.layouts`: kaggle, arena, chosen/rejected pairs; ``auto``
detects it from the columns; the list is :data:`arena_kd.common.keys.FORMATS`).

Everything read is validated (see :mod:`arena_kd.data.row_checks`); problems raise a one-line
:class:`arena_kd.common.errors.UserError`; repairs are counted in ``df.attrs["validation"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.errors import UserError, data_error
from arena_kd.common.keys import FORMATS, LABELS
from arena_kd.data.containers import read_raw
from arena_kd.data.layouts import detect_format, layout_rows
from arena_kd.data.row_checks import cell_text, check_unique_ids, parse_one_hot, require_columns, row_id
from arena_kd.data.schema import make_frame


def read_pairs(path: str | Path, fmt: str = "auto", seed: int = 0) -> pd.DataFrame:
    """Read and validate a pair file into the canonical table (see data/schema.py).

    ``fmt``: auto | kaggle | arena | pairs. ``seed`` randomises which answer is A for chosen/rejected pairs.
    Repaired/flagged counts are in ``df.attrs["validation"]``. Raises UserError on malformed input.
    """
    if fmt not in FORMATS:
        raise UserError(f"{path}: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    table = read_raw(path)
    layout = detect_format(table.columns, table.path) if fmt == "auto" else fmt
    rows = layout_rows(table, layout, seed)
    check_unique_ids([r["id"] for r in rows], table.wheres, table.path)
    # a `source` column (e.g. the sample's mtbench_human / hh_harmless) is kept per row; rows without one
    # (and files without the column) get the file's stem, so mixed training files keep their origins apart
    has_source = "source" in table.columns
    for r, rec, where in zip(rows, table.records, table.wheres):
        src = cell_text(rec.get("source"), table.stats, table.path, where, "source") if has_source else None
        r["source"] = src.strip() if src and src.strip() else table.path.stem
    df = make_frame(rows)
    table.stats.rows = len(df)
    df.attrs["validation"] = table.stats.as_dict()
    df.attrs["format"] = layout
    df.attrs["path"] = str(table.path)
    return df


def read_kaggle_test(path: str | Path) -> pd.DataFrame:
    """Kaggle test.csv (id, prompt, response_a, response_b) -> canonical table with label NA."""
    df = read_pairs(path, fmt="kaggle")
    df["label"] = pd.array([pd.NA] * len(df), dtype="Int8")
    return df


def read_labels(path: str | Path) -> pd.DataFrame:
    """Labels of a labelled file -> DataFrame[id (str), label (int 0/1/2)].

    Kaggle layout files are read from their id and winner columns only (fast); other layouts via read_pairs.
    """
    table = read_raw(path)
    if "id" in table.columns and all(c in table.columns for c in LABELS):
        ids, labels = [], []
        for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
            ids.append(row_id(rec, i, table.path, where, table.path.stem))
            labels.append(parse_one_hot([rec[c] for c in LABELS], LABELS, table.path, where))
        check_unique_ids(ids, table.wheres, table.path)
        return pd.DataFrame({"id": ids, "label": np.asarray(labels, dtype=np.int64)})
    df = read_pairs(path)
    if df["label"].isna().any():
        first = int(np.flatnonzero(df["label"].isna().to_numpy())[0])
        raise data_error(table.path, table.wheres[first], None,
                         "no label (this file is unlabelled; labels need winner columns)")
    return pd.DataFrame({"id": df["id"], "label": df["label"].astype(np.int64)})


def read_sample_submission(path: str | Path) -> pd.DataFrame:
    """Kaggle sample_submission.csv -> DataFrame[id, winner_model_a, winner_model_b, winner_tie] (id as str)."""
    table = read_raw(path)
    require_columns(table.columns, ["id", *LABELS], table.path, "sample_submission")
    ids, probs = [], []
    for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
        ids.append(row_id(rec, i, table.path, where, table.path.stem))
        row = []
        for c in LABELS:
            try:
                v = float(rec[c])
            except (TypeError, ValueError):
                raise data_error(table.path, where, c, f"not a number: {rec[c]!r}") from None
            if not (0.0 <= v <= 1.0):
                raise data_error(table.path, where, c, f"probability out of [0, 1]: {v}")
            row.append(v)
        probs.append(row)
    check_unique_ids(ids, table.wheres, table.path)
    out = pd.DataFrame(probs, columns=list(LABELS))
    out.insert(0, "id", ids)
    return out

