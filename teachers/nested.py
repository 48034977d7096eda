"""Nested teacher soft labels: for student fold k, teacher predictions from models that never saw fold k.

The plain soft labels are the teachers' OOF: row r (in fold j) is predicted by the teacher trained on every fold but
j — which includes fold k. A fold-k student trained on those labels has therefore seen, through the teacher, the
labels of the very rows it is then scored on, so its OOF (and the stacker that trusts it) is slightly optimistic.
The 1st place lived with this. ``teachers.nested: true`` measures it: for each outer fold k, the rows outside k
are split again (``make_folds``, max(2, n_folds − 1) inner folds, seed + k) and each teacher is fine-tuned per inner
fold on the rest of those rows only, predicting the inner fold. The result is, per k, a soft-label file
``soft_labels_nested<k>.parquet`` (next to ``soft_labels.parquet``; same columns, rows outside fold k) combined with
the weights the plain soft labels used (fitted on the plain OOF; a handful of scalars — stated, not nested).

Cost: per teacher n_folds × inner_folds extra fine-tunings on ~(n_folds−2)/n_folds of the rows (2 folds: 4 runs on
a quarter of the rows each, about one extra k-fold pass). Offline teachers (source: logits) cannot be nested: their
OOF is used as is, and the sidecar says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.config import PipelineConfig
from arena_kd.common.config_stages import TeacherConfig
from arena_kd.common.io import write_keyed_table
from arena_kd.common.keys import LOGIT_COLUMNS
from arena_kd.kfold.dist import main_write
from arena_kd.kfold.oof import oof_logits
from arena_kd.kfold.soft_labels import nested_soft_labels_path


def inner_frame(frame: pd.DataFrame, outer_fold: int, n_folds: int, seed: int) -> pd.DataFrame:
    """Rows outside ``outer_fold`` with inner folds in ``fold`` (stratified, grouped by prompt)."""
    from arena_kd.data.folds import make_folds

    rest = frame[frame["fold"].to_numpy() != outer_fold].reset_index(drop=True)
    inner = make_folds(rest, max(2, n_folds - 1), seed + int(outer_fold))
    return rest.assign(fold=inner["fold"].to_numpy())


def run_nested_teacher(cfg: PipelineConfig, t: TeacherConfig, frame: pd.DataFrame, out_dir: Path,
                       hashes: dict[str, str], *, force: bool, fault) -> dict[int, pd.DataFrame]:
    """{outer fold k: id, logit_* of the rows outside k, each predicted by a teacher that saw neither fold k
    nor the row}."""
    from arena_kd.kfold.fold_model import train_and_predict
    from arena_kd.kfold.runner import run_folds
    from arena_kd.llm.train import frame_texts

    out: dict[int, pd.DataFrame] = {}
    texts = frame_texts(frame)  # the tokenizer's texts: the same for every inner fold
    for k in sorted(int(f) for f in frame["fold"].unique()):
        inner = inner_frame(frame, k, cfg.folds.n_folds, cfg.seed)

        def fit_predict(j: int, train_df: pd.DataFrame, valid_df: pd.DataFrame, fold_dir: Path, _k: int = k):
            tta, meta, _ = train_and_predict(
                t.model, t.train, t.predict, cfg.render, train_df, valid_df, fold_dir,
                seed=cfg.seed + 1000 * (_k + 1) + j, workdir=cfg.workdir, tokenizer_texts=texts,
            )
            return tta, meta

        folds = run_folds(inner, out_dir / f"nested{k}", {**hashes, "nested_outer": str(k)}, fit_predict,
                          force=force, fault=fault, label=f"{t.name} nested (outer fold {k})")
        df = pd.concat(folds, ignore_index=True)[["id", *LOGIT_COLUMNS]]
        out[k] = inner[["id"]].merge(df, on="id", how="left")
    return out


def write_nested_soft_labels(cfg: PipelineConfig, names: list[str], nested: dict[str, dict[int, pd.DataFrame]],
                             plain: dict[str, pd.DataFrame], weights: np.ndarray, soft_frame, meta: dict,
                             labels: pd.DataFrame) -> list[Path]:
    """One soft-label file per outer fold (see module doc); teachers without nested logits contribute their OOF.
    ``soft_frame``: teachers.run._soft_label_frame; ``labels``: DataFrame[id, label] of the training rows."""
    from arena_kd.common.metrics import log_loss

    folds = sorted({k for per in nested.values() for k in per})
    paths = []
    for k in folds:
        ids = next(per[k]["id"] for per in nested.values() if k in per)
        logits, sources = [], {}
        for n in names:
            src = nested.get(n, {}).get(k)
            sources[n] = "nested" if src is not None else "oof (offline teacher: cannot be nested)"
            table = src if src is not None else plain[n]
            logits.append(oof_logits(table, ids))
        soft = soft_frame(ids, names, logits, weights, float(meta["temperature"]))  # the plain labels' (fitted) T
        path = nested_soft_labels_path(cfg.soft_labels_path(), k)
        by_id = labels.assign(id=labels["id"].astype(str)).set_index("id")
        y = by_id.loc[ids.astype(str), "label"].to_numpy(dtype=np.int64)
        ens = log_loss(y, np.exp(soft[list(LOGIT_COLUMNS)].to_numpy(dtype=np.float64)))
        main_write(write_keyed_table, path, soft, {**meta, "nested_outer_fold": k, "teacher_sources": sources,
                                                   "ensemble_log_loss_nested": ens, "rows": int(len(ids))})
        paths.append(path)
        print(f"nested soft labels for student fold {k}: {path} ({len(ids)} rows, ensemble log loss {ens:.4f})")
    return paths
