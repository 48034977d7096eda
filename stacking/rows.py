"""The stacker's training rows: every labelled row, with where its student prediction came from.

``provenance``:
  oof       a row of the LLM stages' ``data.max_rows`` subset, predicted by the one fold student that did not train
            on it
  heldout   a row ``data.max_rows`` left out, predicted by the mean of the fold students (none trained on it)
  none      no student prediction (no student OOF at all: the stackers that need no student train on every row)

Stacker folds: subset rows keep their LLM fold; a held-out row whose prompt group occurs in the subset takes that
group's fold (a prompt never spans two stacker folds); the other held-out rows are split by
:func:`data.folds.make_folds` (stratified, grouped by prompt, seeded). With folds of the stacker's own
(``stacking.n_folds``), every row takes its fold from one :func:`data.folds.make_folds` split of all the rows instead:
each row's student prediction is out of fold already, so any split grouped by prompt is honest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.errors import UserError
from arena_kd.common.io import read_keyed_table
from arena_kd.common.keys import LOGIT_COLUMNS
from arena_kd.data.folds import make_folds, prompt_groups
from arena_kd.kfold.runner import ORIG_COLUMNS, SWAP_COLUMNS

ORIG, SWAP = ORIG_COLUMNS, SWAP_COLUMNS  # the student OOF's TTA columns (kfold.runner writes them)


def heldout_folds(subset: pd.DataFrame, heldout: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """int64[len(heldout)] stacker folds for the held-out rows (see module doc)."""
    if heldout.empty:
        return np.zeros(0, dtype=np.int64)
    by_group = dict(zip(prompt_groups(subset), subset["fold"].astype(int)))
    g = prompt_groups(heldout)
    fold = np.array([by_group.get(x, -1) for x in g], dtype=np.int64)
    new = fold < 0
    if new.any():
        rest = heldout[new].reset_index(drop=True)
        if len(np.unique(g[new])) >= n_folds:
            fold[new] = make_folds(rest, n_folds, seed)["fold"].to_numpy()
        else:  # too few new prompts to stratify: spread them by group hash
            fold[new] = g[new] % n_folds
    return fold


def all_rows(data, n_folds: int, seed: int, own_folds: int | None = None) -> pd.DataFrame:
    """Subset rows (with their folds) followed by the held-out rows (stacker folds), plus ``in_llm_rows`` (bool);
    with ``own_folds``, every row's fold comes from one ``own_folds``-fold split of all rows (module doc)."""
    subset = data.frame.assign(in_llm_rows=True)
    held = data.heldout if data.heldout is not None else subset.iloc[:0]
    if own_folds is not None:
        rows = pd.concat([subset, held.assign(fold=-1, in_llm_rows=False)[subset.columns]], ignore_index=True)
        return rows.assign(fold=make_folds(rows, own_folds, seed)["fold"].to_numpy())
    if held.empty:
        return subset.reset_index(drop=True)
    held = held.assign(fold=heldout_folds(data.frame, held, n_folds, seed), in_llm_rows=False)
    return pd.concat([subset, held[subset.columns]], ignore_index=True)


def _read_predictions(path: Path, provenance: str) -> pd.DataFrame:
    df, _ = read_keyed_table(path)
    cols = set(df.columns)
    if not set(ORIG) <= cols and not set(LOGIT_COLUMNS) <= cols:
        raise UserError(f"{path}: student OOF needs columns {', '.join(ORIG)} (or {', '.join(LOGIT_COLUMNS)})")
    out = pd.DataFrame({"id": df["id"].astype(str)})
    orig_cols = ORIG if set(ORIG) <= cols else LOGIT_COLUMNS
    for src, dst in zip(orig_cols, ORIG):
        out[dst] = df[src].to_numpy(dtype=np.float64)
    for c in SWAP:
        out[c] = df[c].to_numpy(dtype=np.float64) if c in cols else np.nan
    out["provenance"] = provenance
    return out


def load_student(oof_path: Path, heldout_path: Path | None, rows: pd.DataFrame
                 ) -> tuple[dict | None, np.ndarray, list[str]]:
    """Student logits for ``rows``: ({"orig": [m,3], "swap": [m,3] | None}, bool[n] present, provenance per present
    row).

    ``swap`` is None when the student ran without TTA (every swap logit missing); a file with swap logits for some
    rows only is refused (one line naming the file and a row)."""
    parts = [_read_predictions(oof_path, "oof")]
    if heldout_path is not None and heldout_path.is_file():
        parts.append(_read_predictions(heldout_path, "heldout"))
    preds = pd.concat(parts, ignore_index=True).drop_duplicates("id", keep="first")
    m = rows[["id"]].astype(str).merge(preds, on="id", how="left", validate="one_to_one")
    orig = m[list(ORIG)].to_numpy(dtype=np.float64)
    present = np.isfinite(orig).all(axis=1)
    if not present.any():
        raise UserError(f"{oof_path}: no id in common with the training rows")
    swap = m[list(SWAP)].to_numpy(dtype=np.float64)[present]
    has_swap = np.isfinite(swap).all(axis=1)
    if has_swap.any() and not has_swap.all():
        bad = int(np.flatnonzero(~has_swap)[0])
        src = oof_path if m["provenance"][present].iloc[bad] == "oof" else heldout_path
        raise UserError(f"{src}: id {m['id'][present].iloc[bad]!r}: non-finite swap logits")
    student = {"orig": orig[present], "swap": swap if has_swap.all() else None}
    return student, present, m["provenance"][present].tolist()
