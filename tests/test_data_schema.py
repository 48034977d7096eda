"""Canonical table and A/B swap augmentation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_kd.data.schema import CANONICAL_COLUMNS, make_frame, swap_frame


def _df():
    df = make_frame([
        {"id": 1, "prompt": ["q"], "response_a": ["a"], "response_b": ["b"], "label": 0,
         "model_a": "ma", "model_b": "mb"},
        {"id": 2, "prompt": ["q2"], "response_a": ["a2"], "response_b": ["b2"], "label": 1},
        {"id": 3, "prompt": ["q3"], "response_a": ["a3"], "response_b": ["b3"], "label": 2},
        {"id": 4, "prompt": ["q4"], "response_a": ["a4"], "response_b": ["b4"], "label": None},
    ])
    return df


def test_make_frame_columns_and_dtypes():
    df = _df()
    assert list(df.columns) == list(CANONICAL_COLUMNS)
    assert df["id"].tolist() == ["1", "2", "3", "4"] and str(df["label"].dtype) == "Int8"


def test_swap_frame_swaps_everything_a_b():
    df = _df()
    df["logit_a"], df["logit_b"], df["logit_tie"] = [1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [0.0] * 4
    df["teacher_logits"] = [np.array([1.0, 2.0, 3.0]), np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), np.zeros(3),
                            np.array([7.0, 8.0, 9.0])]
    s = swap_frame(df)
    assert s["response_a"].tolist() == df["response_b"].tolist()
    assert s["response_b"].tolist() == df["response_a"].tolist()
    assert s.loc[0, "model_a"] == "mb" and s.loc[0, "model_b"] == "ma"
    assert s["label"].tolist()[:3] == [1, 0, 2] and pd.isna(s["label"].iloc[3])
    assert s["logit_a"].tolist() == [5.0, 6.0, 7.0, 8.0] and s["logit_tie"].tolist() == [0.0] * 4
    np.testing.assert_array_equal(s.loc[0, "teacher_logits"], [2.0, 1.0, 3.0])
    np.testing.assert_array_equal(s.loc[1, "teacher_logits"], [[2.0, 1.0, 3.0], [5.0, 4.0, 6.0]])
    np.testing.assert_array_equal(df.loc[0, "teacher_logits"], [1.0, 2.0, 3.0])  # input untouched
    back = swap_frame(s)  # an involution
    assert back.drop(columns="teacher_logits").equals(df.drop(columns="teacher_logits"))
    for x, y in zip(back["teacher_logits"], df["teacher_logits"]):
        np.testing.assert_array_equal(x, y)
