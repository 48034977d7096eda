"""Join the teachers' soft labels onto the student's training rows (by id, coverage checked).

Sources: ``<workdir>/teachers/soft_labels.parquet`` (combined ``logit_a/b/tie`` + per-teacher
``t_<name>_a/b/tie`` columns, weights in the sidecar) or any single teacher's ``oof.parquet``
(combined columns only). Nested soft labels (``soft_labels_nested<k>.parquet``: for student fold k, from
teachers that never saw fold k; written by the teachers stage) are read the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.errors import UserError
from arena_kd.common.io import frame_hash, read_keyed_table
from arena_kd.common.keys import CLASS_SUFFIXES, LOGIT_COLUMNS
from arena_kd.kfold.oof import check_coverage

_PER_TEACHER = re.compile(r"^t_(.+)_a$")


@dataclass
class SoftLabels:
    combined: np.ndarray  # float32 [n,3] ensemble log-probs, in the order of the requested ids
    per_teacher: np.ndarray | None  # float32 [n,k,3] or None when the file has no per-teacher columns
    teacher_names: list[str]
    teacher_weights: list[float] | None  # sidecar weights of the per-teacher columns (normalised), if known
    file_hash: str  # content hash of the table (all columns)
    path: Path
    temperature: float = 1.0  # sidecar's temperature (as written): the T the logits were already tempered at


def teacher_columns(name: str) -> list[str]:
    """One teacher's soft-label columns t_<name>_a, t_<name>_b, t_<name>_tie, in class order."""
    return [f"t_{name}_{s}" for s in CLASS_SUFFIXES]


def per_teacher_names(columns, meta: dict) -> list[str]:
    """Teacher names whose t_<name>_{a,b,tie} columns are all present (sidecar order first)."""
    cols = set(columns)
    names = list(meta.get("per_teacher_columns", {})) or [m.group(1) for c in columns if (m := _PER_TEACHER.match(c))]
    return [n for n in names if all(c in cols for c in teacher_columns(n))]


def load_soft_labels(path: str | Path, ids: pd.Series) -> SoftLabels:
    """Soft labels for ``ids`` (every id must be present: UserError with the count and examples otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: soft labels not found — run `arena-kd teachers` first, "
                        "set student.distill.soft_labels, or use student.distill.alpha=0")
    df, meta = read_keyed_table(path)
    miss_cols = [c for c in LOGIT_COLUMNS if c not in df.columns]
    if miss_cols:
        raise UserError(f"{path}: column '{miss_cols[0]}' missing; soft labels need id, {', '.join(LOGIT_COLUMNS)}")
    check_coverage(path, df["id"], ids)
    rows = df.set_index("id").loc[ids.astype(str).to_numpy()]
    combined = rows[list(LOGIT_COLUMNS)].to_numpy(dtype=np.float32)
    if not np.isfinite(combined).all():
        bad = int(np.flatnonzero(~np.isfinite(combined).all(axis=1))[0])
        raise UserError(f"{path}: id '{ids.iloc[bad]}': soft labels are not finite")
    names = per_teacher_names(df.columns, meta)
    per = None
    weights = None
    if names:
        per = np.stack([rows[teacher_columns(n)].to_numpy(dtype=np.float32) for n in names], axis=1)
        w = meta.get("weights") or {}
        if all(n in w for n in names):
            arr = np.asarray([float(w[n]) for n in names])
            weights = (arr / arr.sum()).tolist() if arr.sum() > 0 else None
    # content hash: independent of the Parquet writer
    return SoftLabels(combined, per, names, weights, frame_hash(df), path, meta.get("temperature", 1.0))


def attach_teacher_logits(frame: pd.DataFrame, soft: SoftLabels, per_teacher: bool) -> pd.DataFrame:
    """Copy of ``frame`` with a ``teacher_logits`` column: float32 (3,) per row, or (k,3) when per_teacher."""
    if per_teacher and soft.per_teacher is None:
        raise UserError(f"{soft.path}: student.distill.per_teacher=true needs per-teacher columns t_<name>_a/b/tie "
                        "(soft_labels.parquet from `arena-kd teachers`)")
    arr = soft.per_teacher if per_teacher else soft.combined
    out = frame.copy()
    out["teacher_logits"] = list(arr)
    return out


def nested_soft_labels_path(soft_labels: Path, outer_fold: int) -> Path:
    return Path(soft_labels).with_name(f"soft_labels_nested{int(outer_fold)}.parquet")


def load_nested_logits(soft_labels: Path, outer_fold: int, ids: pd.Series, per_teacher: bool) -> list[np.ndarray]:
    """Per-row teacher logits for the fold-``outer_fold`` student's training ``ids`` from the nested file
    (float32 (3,) per row, or (k,3) per row when ``per_teacher``)."""
    soft = load_soft_labels(nested_soft_labels_path(soft_labels, outer_fold), ids)
    return attach_teacher_logits(pd.DataFrame({"id": ids.to_numpy()}), soft, per_teacher)["teacher_logits"].tolist()
