"""Readers: every layout into the canonical table, auto-detection, labels, sample submission."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _data_fixtures import write_csv, write_kaggle_train

from arena_kd.common.errors import UserError
from arena_kd.data.layouts import detect_format, parse_hh_dialogue
from arena_kd.data.readers import (
    read_kaggle_test,
    read_labels,
    read_pairs,
    read_sample_submission,
)
from arena_kd.data.schema import CANONICAL_COLUMNS

SAMPLE = "data/sample"


def test_kaggle_train_to_canonical(tmp_path):
    path = write_kaggle_train(tmp_path / "train.csv", n=6)
    df = read_pairs(path)
    assert list(df.columns) == list(CANONICAL_COLUMNS)
    assert df["id"].tolist() == [str(100 + i) for i in range(6)]
    assert df["label"].tolist() == [0, 1, 2, 0, 1, 2]
    assert df.loc[1, "prompt"] == ["question 1?"] and df.loc[1, "response_b"] == ["answer b1"]
    assert df.loc[0, "model_a"] == "m1" and df.loc[0, "source"] == "train"
    assert df.attrs["format"] == "kaggle"


def test_kaggle_multiturn_and_test_layout(tmp_path):
    rows = [[7, json.dumps(["q1", "q2"]), json.dumps(["a1", "a2"]), json.dumps(["b1", "b2"])]]
    path = write_csv(tmp_path / "test.csv", ["id", "prompt", "response_a", "response_b"], rows)
    df = read_kaggle_test(path)
    assert df.loc[0, "prompt"] == ["q1", "q2"] and df.loc[0, "response_a"] == ["a1", "a2"]
    assert df["label"].isna().all() and str(df["label"].dtype) == "Int8"
    assert read_pairs(path)["label"].isna().all()


def test_real_sample_files_read():
    train = read_pairs(f"{SAMPLE}/train.csv")
    test = read_kaggle_test(f"{SAMPLE}/test.csv")
    labels = read_labels(f"{SAMPLE}/test_labels.csv")
    sub = read_sample_submission(f"{SAMPLE}/sample_submission.csv")
    assert len(train) > 1500 and train["label"].notna().all() and set(train["label"].unique()) == {0, 1, 2}
    assert test["id"].tolist() == labels["id"].tolist() == sub["id"].tolist()
    assert not set(train["id"]) & set(test["id"])
    np.testing.assert_allclose(sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), 1 / 3)
    # grouped by prompt: no first user turn in both splits
    first = lambda d: {" ".join(p[0].split()).casefold() for p in d["prompt"]}  # noqa: E731
    assert not first(train) & first(test)


def _arena_record(qid, winner, turns=1):
    conv = lambda side: [  # noqa: E731
        m for t in range(turns)
        for m in ({"role": "user", "content": f"q{qid}-{t}"}, {"role": "assistant", "content": f"{side}{qid}-{t}"})
    ]
    return {"question_id": qid, "model_a": "x", "model_b": "y", "winner": winner, "judge": "j",
            "conversation_a": conv("a"), "conversation_b": conv("b")}


def test_arena_jsonl_and_parquet(tmp_path):
    recs = [_arena_record("q1", "model_a"), _arena_record("q2", "model_b", turns=2), _arena_record("q3", "tie"),
            _arena_record("q4", "tie (bothbad)")]
    jl = tmp_path / "arena.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    df = read_pairs(jl)
    assert df.attrs["format"] == "arena"
    assert df["label"].tolist() == [0, 1, 2, 2]
    assert df["id"].tolist() == ["q1", "q2", "q3", "q4"]  # unique question ids become ids
    assert df.loc[1, "prompt"] == ["qq2-0", "qq2-1"] and df.loc[1, "response_b"] == ["bq2-0", "bq2-1"]
    # Parquet with the conversations as nested lists
    pq = tmp_path / "arena.parquet"
    pd.DataFrame(recs).to_parquet(pq)
    dq = read_pairs(pq)
    turns = ["prompt", "response_a", "response_b"]
    assert dq[turns].map(tuple).equals(df[turns].map(tuple))
    assert dq["label"].tolist() == [0, 1, 2, 2]


def test_arena_repeated_question_ids_get_row_ids(tmp_path):
    jl = tmp_path / "mt.jsonl"
    jl.write_text("\n".join(json.dumps(_arena_record("81", w)) for w in ("model_a", "model_b")))
    assert read_pairs(jl)["id"].tolist() == ["mt-000000", "mt-000001"]


def test_arena_sample_example_matches_csv_rows():
    df = read_pairs(f"{SAMPLE}/arena_example.jsonl")
    assert len(df) == 40 and df["label"].notna().all()
    assert all(len(p) == len(a) == len(b) for p, a, b in zip(df["prompt"], df["response_a"], df["response_b"]))


HH_CHOSEN = ("\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.\n\nHuman: Then?"
             "\n\nAssistant: Bake it at 220C.")
HH_REJECTED = ("\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.\n\nHuman: Then?"
               "\n\nAssistant: I don't know.")


def test_hh_dialogue_parse():
    assert parse_hh_dialogue(HH_CHOSEN) == [
        ("user", "How do I bake bread?"), ("assistant", "Mix flour and water."), ("user", "Then?"),
        ("assistant", "Bake it at 220C."),
    ]


def test_pairs_hh_randomised_by_seed(tmp_path):
    n = 40
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(json.dumps({"chosen": HH_CHOSEN + f" #{i}", "rejected": HH_REJECTED}) for i in range(n)))
    df = read_pairs(path, seed=1)
    assert df.attrs["format"] == "pairs"
    assert set(df["label"].unique()) == {0, 1}  # both assignments occur
    assert 8 <= (df["label"] == 0).sum() <= 32
    for _, r in df.iterrows():  # the label always points at the chosen answer
        winner = r["response_a"] if r["label"] == 0 else r["response_b"]
        loser = r["response_b"] if r["label"] == 0 else r["response_a"]
        assert winner[-1].startswith("Bake it") and loser[-1] == "I don't know."
        assert r["prompt"] == ["How do I bake bread?", "Then?"] and winner[0] == "Mix flour and water."
    again = read_pairs(path, seed=1)
    assert again["label"].tolist() == df["label"].tolist()  # deterministic
    assert read_pairs(path, seed=2)["label"].tolist() != df["label"].tolist()


def test_pairs_prompt_chosen_rejected_csv(tmp_path):
    rows = [[f"p{i}", f"good {i}", f"bad {i}"] for i in range(10)]
    path = write_csv(tmp_path / "prefs.csv", ["prompt", "chosen", "rejected"], rows)
    df = read_pairs(path, seed=0)
    assert df["id"].tolist()[0] == "prefs-000000"
    for _, r in df.iterrows():
        assert len(r["prompt"]) == 1 and r["prompt"][0].startswith("p")
        chosen = r["response_a"] if r["label"] == 0 else r["response_b"]
        assert chosen[0].startswith("good")


def test_pairs_message_lists(tmp_path):
    msgs = lambda ans: [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ans}]  # noqa: E731
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps({"id": "u1", "chosen": msgs("hello!"), "rejected": msgs("go away")}) + "\n")
    df = read_pairs(path, seed=3)
    assert df.loc[0, "prompt"] == ["hi"] and df.loc[0, "id"] == "u1"
    assert sorted([df.loc[0, "response_a"][0], df.loc[0, "response_b"][0]]) == ["go away", "hello!"]


def test_forced_format_and_detection_errors(tmp_path):
    path = write_csv(tmp_path / "odd.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(UserError, match="cannot tell the layout"):
        read_pairs(path)
    with pytest.raises(UserError, match="missing column"):
        read_pairs(path, fmt="kaggle")
    with pytest.raises(UserError, match="unknown format"):
        read_pairs(path, fmt="xml")
    assert detect_format(["conversation_a", "conversation_b", "winner"], "f") == "arena"
    with pytest.raises(UserError, match="file not found"):
        read_pairs(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("hi")  # the content decides (issue 22): a CSV header without rows
    with pytest.raises(UserError, match="x.txt: no data rows"):
        read_pairs(tmp_path / "x.txt")


def test_read_labels_and_sample_submission_errors(tmp_path):
    path = write_kaggle_train(tmp_path / "train.csv", n=3)
    lab = read_labels(path)
    assert lab["id"].tolist() == ["100", "101", "102"] and lab["label"].tolist() == [0, 1, 2]
    unl = write_csv(tmp_path / "test.csv", ["id", "prompt", "response_a", "response_b"],
                    [[1, '["q"]', '["a"]', '["b"]']])
    with pytest.raises(UserError, match="no label"):
        read_labels(unl)
    sub = write_csv(tmp_path / "sub.csv", ["id", "winner_model_a", "winner_model_b", "winner_tie"],
                    [[1, 0.2, "x", 0.4]])
    with pytest.raises(UserError, match=r"sub.csv: row 1 \(line 2\), column 'winner_model_b': not a number"):
        read_sample_submission(sub)
    sub2 = write_csv(tmp_path / "sub2.csv", ["id", "winner_model_a", "winner_model_b", "winner_tie"],
                     [[1, 0.2, 1.5, 0.4]])
    with pytest.raises(UserError, match="out of"):
        read_sample_submission(sub2)
