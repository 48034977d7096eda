"""arena_kd.teachers.nested: per student fold k, soft labels from teachers that never saw fold k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd.common.config import load_config
from arena_kd.common.errors import UserError
from arena_kd.common.io import read_keyed_table
from arena_kd.common.keys import LOGIT_COLUMNS
from arena_kd.data.folds import prompt_groups
from arena_kd.kfold.soft_labels import load_nested_logits, nested_soft_labels_path
from arena_kd.teachers.nested import inner_frame, write_nested_soft_labels

ROOT = Path(__file__).resolve().parents[1]


def _data(tmp_path, n_folds=3):
    from arena_kd.kfold.training_data import load_training_data

    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"workdir={tmp_path}", "data.max_rows=120",
                                                        f"folds.n_folds={n_folds}"])
    return cfg, load_training_data(cfg)


@pytest.mark.parametrize("n_folds", [2, 3])
def test_inner_frame_never_contains_the_outer_fold_and_keeps_prompts_together(tmp_path, n_folds):
    cfg, data = _data(tmp_path, n_folds)
    frame = data.frame
    for k in range(n_folds):
        inner = inner_frame(frame, k, n_folds, cfg.seed)
        outer_ids = set(frame.loc[frame["fold"] == k, "id"])
        assert not outer_ids & set(inner["id"]) and len(inner) == len(frame) - len(outer_ids)
        assert set(inner["fold"]) == set(range(max(2, n_folds - 1)))
        assert (pd.Series(inner["fold"].to_numpy()).groupby(prompt_groups(inner)).nunique() == 1).all()


def test_nested_soft_label_files_cover_the_rows_outside_each_fold(tmp_path):
    from arena_kd.teachers.run import _soft_label_frame

    cfg, data = _data(tmp_path, 2)
    frame = data.frame
    rng = np.random.default_rng(0)
    names = ["t1", "t2"]
    plain = {n: pd.DataFrame({"id": frame["id"], **{c: rng.normal(size=len(frame)) for c in LOGIT_COLUMNS}})
             for n in names}
    nested = {"t1": {}}
    for k in (0, 1):
        rest = frame[frame["fold"] != k]
        nested["t1"][k] = pd.DataFrame({"id": rest["id"], **{c: np.full(len(rest), float(k)) for c in LOGIT_COLUMNS}})
    meta = {"teachers": names, "weights": {"t1": 0.5, "t2": 0.5}, "temperature": 1.0,
            "per_teacher_columns": {n: [f"t_{n}_{s}" for s in ("a", "b", "tie")] for n in names}, "hashes": {}}
    paths = write_nested_soft_labels(cfg, names, nested, plain, np.array([0.5, 0.5]), _soft_label_frame, meta,
                                     frame[["id", "label"]])
    assert paths == [nested_soft_labels_path(cfg.soft_labels_path(), k) for k in (0, 1)]
    for k, p in enumerate(paths):
        df, side = read_keyed_table(p)
        assert set(df["id"]) == set(frame.loc[frame["fold"] != k, "id"])
        assert side["teacher_sources"] == {"t1": "nested", "t2": "oof (offline teacher: cannot be nested)"}
        # t1's per-teacher columns are the nested logits (constant k → uniform log-probs), not its plain OOF
        np.testing.assert_allclose(df["t_t1_a"], np.log(1 / 3), atol=1e-6)
        logits = load_nested_logits(cfg.soft_labels_path(), k, df["id"], per_teacher=True)
        assert len(logits) == len(df) and np.asarray(logits[0]).shape == (2, 3)


def test_student_nested_without_nested_files_is_a_one_line_error(tmp_path):
    from arena_kd.student.run import run_distill
    from arena_kd.teachers.run import _soft_label_frame

    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"workdir={tmp_path}", "data.max_rows=60",
                                                        "student.distill.nested=true"])
    from arena_kd.kfold.training_data import load_training_data

    frame = load_training_data(cfg).frame
    from arena_kd.common.io import write_keyed_table

    logits = [np.zeros((len(frame), 3))]
    write_keyed_table(cfg.soft_labels_path(), _soft_label_frame(frame["id"], ["t"], logits, np.array([1.0]), 1.0), {})
    with pytest.raises(UserError,
                       match="soft_labels_nested0.parquet: student.distill.nested=true needs the nested soft labels"):
        run_distill(cfg)
