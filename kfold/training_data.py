"""The labelled training frame every model stage uses: read, seeded subset, folds joined, hashes.

Teachers and student read the same rows and the same folds file, so their OOF predictions line up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.config import PipelineConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import file_hash, frame_hash

DATA_HASH_COLUMNS = ["id", "prompt", "response_a", "response_b", "label"]


@dataclass
class TrainingData:
    frame: pd.DataFrame  # canonical columns + fold (int), labelled rows only
    data_hash: str  # content hash of the rows used
    folds_hash: str  # hash of the folds file
    folds_path: Path
    # labelled rows left out by data.max_rows (canonical columns, no fold): never trained on by the LLM stages; the
    # student's fold models predict them (mean of the fold models) so that the stacker can train on every row
    heldout: pd.DataFrame | None = None


def subset_rows(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """The first ``max_rows`` rows after a seeded shuffle (all rows, original order, when None)."""
    if max_rows is None or max_rows >= len(df):
        return df.reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(df))[:max_rows]
    return df.iloc[np.sort(order)].reset_index(drop=True)


def load_training_data(cfg: PipelineConfig) -> TrainingData:
    """Read ``data.train`` (validated canonical table), keep labelled rows, subset, attach the shared folds."""
    from arena_kd.data.folds import label_problem, make_or_load_folds
    from arena_kd.data.readers import read_pairs

    df = read_pairs(cfg.data.train, fmt=cfg.data.format, seed=cfg.seed)
    df = df[df["label"].notna()].reset_index(drop=True)
    if df.empty:
        raise UserError(f"{cfg.data.train}: no labelled rows to train on")
    all_rows = df
    df = subset_rows(df, cfg.data.max_rows, cfg.seed)
    problem = label_problem(df["label"])
    if problem:  # before the folds file is written: nothing is made from data that cannot train
        raise UserError(f"{cfg.data.train}: {problem}")
    heldout = all_rows[~all_rows["id"].isin(set(df["id"]))].reset_index(drop=True)
    folds_path = cfg.folds_path()
    folds = make_or_load_folds(df, folds_path, cfg.folds.n_folds, cfg.seed)
    folds = folds.assign(id=folds["id"].astype(str))[["id", "fold"]]
    frame = df.merge(folds, on="id", how="left", validate="one_to_one")
    missing = frame["fold"].isna()
    if missing.any():
        ex = ", ".join(frame.loc[missing, "id"].head(5))
        raise UserError(f"{folds_path}: {int(missing.sum())} training ids have no fold (e.g. {ex}); "
                        "delete the folds file to rebuild it")
    frame["fold"] = frame["fold"].astype(int)
    problem = label_problem(frame["label"], frame["fold"])
    if problem:
        raise UserError(f"{cfg.data.train} with {folds_path}: {problem}")
    return TrainingData(
        frame=frame,
        data_hash=frame_hash(frame, DATA_HASH_COLUMNS),
        folds_hash=file_hash(folds_path),
        folds_path=Path(folds_path),
        heldout=heldout,
    )


def read_extra(cfg: PipelineConfig, train_ids: pd.Series) -> pd.DataFrame:
    """The data.extra rows (canonical, label NA where the file has none), in file order; ids must be unique and no
    training id (UserError otherwise): the teachers pseudo-label them, the student may train on them."""
    from arena_kd.data.readers import read_pairs

    extra = pd.concat([read_pairs(p, fmt="auto", seed=cfg.seed) for p in cfg.data.extra], ignore_index=True)
    dup = extra["id"].astype(str).duplicated() | extra["id"].astype(str).isin(set(train_ids.astype(str)))
    if dup.any():
        raise UserError(f"data.extra: id '{extra.loc[dup, 'id'].iloc[0]}' is repeated or also a training id; "
                        "extra ids must be unique")
    return extra.reset_index(drop=True)
