"""Folds: grouped by prompt, stratified, deterministic, cached and checked on reuse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena_kd.common.errors import UserError
from arena_kd.data.folds import make_folds, make_or_load_folds, prompt_groups
from arena_kd.data.readers import read_pairs
from arena_kd.data.schema import make_frame


def _frame(n_prompts=60, per_prompt=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for k in range(per_prompt):
            # same first turn, other spacing/case
            prompt = [f"Question {p} ?"] if k == 0 else [f"  question {p}   ?", "follow up"]
            rows.append({"id": f"r{p}-{k}", "prompt": prompt, "response_a": ["a"], "response_b": ["b"],
                         "label": int(rng.choice(3, p=[0.45, 0.45, 0.1]))})
    return make_frame(rows)


def test_same_prompt_never_in_two_folds():
    df = _frame()
    folds = make_folds(df, 5, seed=0)
    assert folds["id"].tolist() == df["id"].tolist()
    assert set(folds["fold"]) == set(range(5))
    per_group = pd.Series(folds["fold"].to_numpy()).groupby(prompt_groups(df)).nunique()
    assert (per_group == 1).all()
    assert len(np.unique(prompt_groups(df))) == 60  # first turn normalised: 'Question 1 ?' == '  question 1   ?'


def test_stratified_on_real_sample():
    df = read_pairs("data/sample/train.csv")
    folds = make_folds(df, 5, seed=3)
    overall = df["label"].value_counts(normalize=True)
    for k in range(5):
        part = df.loc[folds["fold"].to_numpy() == k, "label"].value_counts(normalize=True)
        assert (part - overall).abs().max() < 0.06
        assert 0.15 < (folds["fold"] == k).mean() < 0.25
    groups = prompt_groups(df)
    assert (pd.Series(folds["fold"].to_numpy()).groupby(groups).nunique() == 1).all()


def test_deterministic_and_order_independent():
    df = _frame()
    a = make_folds(df, 4, seed=7)
    assert a.equals(make_folds(df, 4, seed=7))
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    b = make_folds(shuffled, 4, seed=7)
    assert dict(zip(a["id"], a["fold"])) == dict(zip(b["id"], b["fold"]))
    assert not a["fold"].equals(make_folds(df, 4, seed=8)["fold"])


def test_saved_and_reused(tmp_path):
    df = _frame()
    path = tmp_path / "work" / "folds.csv"
    first = make_or_load_folds(df, path, 3, seed=0)
    assert path.is_file()
    on_disk = pd.read_csv(path, dtype={"id": str})
    assert list(on_disk.columns) == ["id", "fold"] and on_disk.equals(first)
    # reuse: a different seed does not matter any more, the file wins; subsets are served in their order
    again = make_or_load_folds(df.iloc[::-1], path, 3, seed=99)
    assert dict(zip(again["id"], again["fold"])) == dict(zip(first["id"], first["fold"]))
    assert again["id"].tolist() == df["id"].tolist()[::-1]


def test_reuse_mismatch_errors(tmp_path):
    df = _frame()
    path = tmp_path / "folds.csv"
    make_or_load_folds(df, path, 3, seed=0)
    other = df.copy()
    other.loc[0, "id"] = "new-id"
    with pytest.raises(UserError, match="does not cover 1 of the 180 data ids.*'new-id'.*delete it"):
        make_or_load_folds(other, path, 3, seed=0)
    with pytest.raises(UserError, match="has 3 folds but the config asks for 5"):
        make_or_load_folds(df, path, 5, seed=0)
    path.write_text("id,split\n1,2\n")
    with pytest.raises(UserError, match="must have columns id,fold"):
        make_or_load_folds(df, path, 3, seed=0)


def test_too_few_prompts():
    with pytest.raises(UserError, match="only 2 distinct prompts for 5 folds"):
        make_folds(_frame(n_prompts=2), 5, seed=0)


def test_unlabelled_rows_get_folds():
    df = _frame()
    df["label"] = pd.array([pd.NA] * len(df), dtype="Int8")
    folds = make_folds(df, 3, seed=0)
    assert set(folds["fold"]) == {0, 1, 2}
