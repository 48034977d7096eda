"""Cross-validation folds: stratified by label, grouped by prompt, deterministic, cached.

Rows are grouped by their *first* user turn (whitespace-normalised, case-folded), so the same
question never lands in two folds — including multi-turn continuations of it (MT-Bench's turn-2
rows) and the same prompt answered by different model pairs (frequent in the Kaggle data).
The folds file (``id,fold``) is written once under ``workdir`` and reused by every stage.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from arena_kd.common.errors import UserError
from arena_kd.common.io import atomic_write_csv
from arena_kd.common.keys import CLASS_NAMES


def prompt_groups(df: pd.DataFrame) -> np.ndarray:
    """int64[n] group id per row: a hash of the normalised first prompt turn."""
    keys = []
    for turns in df["prompt"]:
        first = turns[0] if len(turns) and isinstance(turns[0], str) else ""
        norm = " ".join(first.split()).casefold()
        digest = hashlib.blake2b(norm.encode("utf-8", "replace"), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little") >> 1)
    return np.asarray(keys, dtype=np.int64)


def label_problem(labels, folds=None) -> str | None:
    """Why labelled rows cannot train a classifier, or None: every row has one label (nothing to tell apart), or
    — with ``folds`` — the training rows of some fold (the rows outside it) all have one label, so that fold's model
    would learn a constant. Labels are ints in class order; NA rows are ignored."""
    y = pd.Series(labels).dropna().astype(int).to_numpy()
    present = np.unique(y)
    if len(y) and len(present) < 2:
        return (f"all {len(y)} labelled rows are '{CLASS_NAMES[present[0]]}': a classifier needs rows of at least two "
                f"of {' / '.join(CLASS_NAMES)}")
    if folds is None or not len(y):
        return None
    f = pd.Series(folds).loc[pd.Series(labels).notna()].to_numpy()
    for k in np.unique(f):
        outside = np.unique(y[f != k])
        if len(outside) < 2:
            what = f"are all '{CLASS_NAMES[outside[0]]}'" if len(outside) else "are none"
            return (f"the training rows of fold {int(k)} (the rows outside it) {what}: its model would learn a "
                    "constant; use fewer folds or add rows of the other classes")
    return None


def make_folds(df: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """DataFrame[id, fold] (input order). Unlabelled rows are stratified as their own class."""
    groups = prompt_groups(df)
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise UserError(f"only {n_groups} distinct prompts for {n_folds} folds; use fewer folds or more data")
    y = df["label"].astype("float64").fillna(3).to_numpy().astype(np.int64)
    # sort rows by id first so the split does not depend on the input row order
    order = np.argsort(df["id"].astype(str).to_numpy(), kind="stable")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(df), -1, dtype=np.int64)
    # StratifiedGroupKFold warns when a class has fewer members than folds; that is fine here
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, val) in enumerate(splitter.split(np.zeros(len(df)), y[order], groups[order])):
            fold[order[val]] = k
    return pd.DataFrame({"id": df["id"].astype(str).to_numpy(), "fold": fold})


def load_folds(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    try:
        folds = pd.read_csv(p, dtype={"id": str})
    except Exception as exc:
        raise UserError(f"{p}: unreadable folds file ({type(exc).__name__}); delete it to recreate") from None
    if list(folds.columns[:2]) != ["id", "fold"]:
        raise UserError(f"{p}: folds file must have columns id,fold (has {', '.join(map(str, folds.columns))}); "
                        "delete it to recreate")
    if folds["id"].duplicated().any():
        dup = folds.loc[folds["id"].duplicated(), "id"].iloc[0]
        raise UserError(f"{p}: duplicate id {dup!r} in folds file; delete it to recreate")
    if not pd.api.types.is_integer_dtype(folds["fold"]) or (folds["fold"] < 0).any():
        raise UserError(f"{p}: column 'fold' must hold non-negative integers; delete it to recreate")
    return folds[["id", "fold"]]


def make_or_load_folds(df: pd.DataFrame, path: str | Path, n_folds: int, seed: int) -> pd.DataFrame:
    """Folds for ``df`` (DataFrame[id, fold] in df's row order): loaded from ``path`` if it exists, else made and saved.

    An existing file must cover every id of ``df`` and have ``n_folds`` folds; otherwise a UserError says why
    (the data or the fold count changed: delete the file or point ``folds.file`` elsewhere).
    """
    p = Path(path)
    ids = df["id"].astype(str)
    if p.is_file():
        folds = load_folds(p)
        found = folds["fold"].nunique()
        if found != n_folds or folds["fold"].max() != n_folds - 1:
            raise UserError(f"{p}: folds file has {found} folds but the config asks for {n_folds}; "
                            "delete it or set folds.file to a new path")
        mapping = dict(zip(folds["id"], folds["fold"]))
        missing = [i for i in ids if i not in mapping]
        if missing:
            raise UserError(
                f"{p}: folds file does not cover {len(missing)} of the {len(ids)} data ids (e.g. {missing[0]!r}); "
                "it was made for other data: delete it or set folds.file to a new path"
            )
        return pd.DataFrame({"id": ids.to_numpy(), "fold": [int(mapping[i]) for i in ids]})
    folds = make_folds(df, n_folds, seed)
    atomic_write_csv(p, folds)
    return folds
