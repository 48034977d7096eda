"""The student's extra rows (``student.extra_pairs``): data.extra pairs with the teachers' pseudo-labels
(``teachers/soft_labels_extra.parquet``) and no hard label — the loss gives them the soft terms only.

Which rows, and where they may train:
- an extra row on a test question (the first user turn of a data.test row, as data.folds groups) is dropped: the
  student never trains on the questions it is scored on (the demo's data.extra also holds the test file itself, for
  the report);
- an exact copy of a labelled pair (same prompt and answers, either orientation) and a repeated extra pair are
  dropped: the labelled row already teaches it;
- the others follow their question: an extra row whose question has training rows in fold k gets fold k and never
  trains fold k's student (its pseudo-label comes from teachers that saw fold k's labels of that question); one whose
  question is in no fold gets fold -1 and trains every fold student. Extra rows are never predicted or scored as OOF
  rows: run_folds splits the labelled frame only, and rows_for_fold adds the extras to the training side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.config import PipelineConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import frame_hash, json_hash
from arena_kd.data.folds import prompt_groups
from arena_kd.data.unlabelled_pairs import pair_keys
from arena_kd.kfold.soft_labels import SoftLabels, attach_teacher_logits, load_soft_labels
from arena_kd.kfold.training_data import TrainingData, read_extra

NO_FOLD = -1  # an extra row whose question is in no fold: trains every fold student


@dataclass
class ExtraPairs:
    frame: pd.DataFrame  # canonical columns, label NA, fold (NO_FOLD or the fold of its question), teacher_logits
    counts: dict[str, int]  # rows read, dropped per reason, kept
    hash: str  # what the fold files depend on: rows, their pseudo-labels, folds and the settings


def extra_soft_labels_path(cfg: PipelineConfig) -> Path:
    ep = cfg.student.extra_pairs
    return Path(ep.soft_labels) if ep.soft_labels else cfg.workdir_path / "teachers" / "soft_labels_extra.parquet"


def filter_extra(extra: pd.DataFrame, labelled: pd.DataFrame, test: pd.DataFrame | None) -> tuple[pd.DataFrame,
                                                                                                   dict[str, int]]:
    """(kept rows, counts): drop rows on a test question, exact copies of a labelled pair, repeats (module doc)."""
    counts = {"read": int(len(extra))}
    on_test = np.isin(prompt_groups(extra), prompt_groups(test)) if test is not None and len(test) else \
        np.zeros(len(extra), dtype=bool)
    keys = pd.Series(pair_keys(extra))
    copy = keys.isin(set(pair_keys(labelled))).to_numpy() & ~on_test
    repeat = keys.duplicated().to_numpy() & ~on_test & ~copy
    counts.update(on_test_question=int(on_test.sum()), copy_of_labelled=int(copy.sum()), repeated=int(repeat.sum()))
    kept = extra[~(on_test | copy | repeat)].reset_index(drop=True)
    counts["kept"] = int(len(kept))
    return kept, counts


def assign_folds(extra: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    """int64[n]: the fold of each extra row's question among ``frame``'s rows (id, prompt, fold), NO_FOLD when none.
    data.folds keeps a question in one fold, so the map is one-to-one."""
    fold_of = dict(zip(prompt_groups(frame).tolist(), frame["fold"].astype(int).tolist()))
    return np.asarray([fold_of.get(g, NO_FOLD) for g in prompt_groups(extra).tolist()], dtype=np.int64)


def rows_for_fold(extra: ExtraPairs | None, fold: int) -> pd.DataFrame | None:
    """The extra rows fold ``fold``'s student may train on: all but those whose question is in fold ``fold``."""
    if extra is None:
        return None
    return extra.frame[extra.frame["fold"] != int(fold)].reset_index(drop=True)


def with_extra(train_df: pd.DataFrame, extra_rows: pd.DataFrame | None) -> pd.DataFrame:
    """``train_df`` followed by ``extra_rows`` (columns aligned; the extras' label NA)."""
    if extra_rows is None or extra_rows.empty:
        return train_df
    return pd.concat([train_df, extra_rows[list(train_df.columns)]], ignore_index=True)


def _subset(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if max_rows is None or max_rows >= len(df):
        return df
    keep = np.sort(np.random.default_rng(seed).permutation(len(df))[:max_rows])
    return df.iloc[keep].reset_index(drop=True)


def load_extra_pairs(cfg: PipelineConfig, data: TrainingData, soft: SoftLabels | None, per_teacher: bool) -> ExtraPairs:
    """The extra rows of ``cfg`` for the student (module doc), with ``teacher_logits`` like the labelled rows'."""
    from arena_kd.data.readers import read_pairs

    ep = cfg.student.extra_pairs
    if not cfg.data.extra:
        raise UserError("student.extra_pairs.enabled needs data.extra (e.g. a file from `arena-kd make-pairs`) and "
                        "teachers.predict_extra=true")
    extra = read_extra(cfg, data.frame["id"])
    labelled = data.frame if data.heldout is None else pd.concat([data.frame, data.heldout], ignore_index=True)
    test = read_pairs(cfg.data.test, seed=cfg.seed) if cfg.data.test else None
    kept, counts = filter_extra(extra, labelled, test)
    kept = _subset(kept, ep.max_rows, cfg.seed)
    counts["used"] = int(len(kept))
    path = extra_soft_labels_path(cfg)
    pseudo = load_soft_labels(path, kept["id"])
    if soft is not None and pseudo.teacher_names != soft.teacher_names:
        raise UserError(f"{path}: teachers {pseudo.teacher_names} differ from the soft labels' {soft.teacher_names}; "
                        "rerun `arena-kd teachers`")
    kept = attach_teacher_logits(kept, pseudo, per_teacher)
    kept["fold"] = assign_folds(kept, data.frame)
    kept["label"] = pd.array([pd.NA] * len(kept), dtype="Int8")
    digest = json_hash({"rows": frame_hash(kept, ["id", "prompt", "response_a", "response_b", "fold"]) if len(kept)
                        else "", "pseudo_labels": pseudo.file_hash, "settings": ep.model_dump(mode="json")})
    print(f"[student] extra pairs: {counts['read']} read, {counts['on_test_question']} on a test question, "
          f"{counts['copy_of_labelled']} copies of a labelled pair, {counts['repeated']} repeated → {counts['used']} "
          f"used ({int((kept['fold'] == NO_FOLD).sum())} on a question in no fold)")
    return ExtraPairs(kept, counts, digest)
