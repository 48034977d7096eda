"""arena_kd.evaluate: scores match the metric, rows are joined by id, mismatches are user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _data_fixtures import write_csv, write_kaggle_train

from arena_kd.common.errors import UserError
from arena_kd.data.readers import read_labels
from arena_kd.evaluate import evaluate_files

SUB_HEADER = ["id", "winner_model_a", "winner_model_b", "winner_tie"]


def test_scores_joined_by_id_not_row_order(tmp_path, capsys):
    labels = write_kaggle_train(tmp_path / "labels.csv", n=3)  # ids 100,101,102 with labels 0,1,2
    pred = write_csv(tmp_path / "pred.csv", SUB_HEADER, [[102, 0.1, 0.1, 0.8], [100, 0.7, 0.2, 0.1],
                                                         [101, 0.2, 0.6, 0.2]])
    r = evaluate_files(str(pred), str(labels))
    expected = -np.mean(np.log([0.7, 0.6, 0.8]))
    assert r["log_loss"] == pytest.approx(expected) and r["accuracy"] == 1.0
    cal = {c["class"]: c for c in r["calibration"]}
    assert cal["tie"]["mean_pred"] == pytest.approx((0.8 + 0.1 + 0.2) / 3)
    assert cal["tie"]["observed"] == pytest.approx(1 / 3)
    out = capsys.readouterr().out
    assert f"log loss: {expected:.5f}" in out and "accuracy: 1.0000" in out


def test_unnormalised_rows_are_renormalised_and_errors(tmp_path):
    labels = write_kaggle_train(tmp_path / "labels.csv", n=1)
    pred = write_csv(tmp_path / "pred.csv", SUB_HEADER, [[100, 0.5, 0.25, 0.25]])
    twice = write_csv(tmp_path / "pred2.csv", SUB_HEADER, [[100, 1.0, 0.5, 0.5]])
    assert evaluate_files(str(pred), str(labels))["log_loss"] == pytest.approx(np.log(2))
    assert evaluate_files(str(twice), str(labels))["log_loss"] == pytest.approx(np.log(2))  # rows renormalised
    above = write_csv(tmp_path / "pred6.csv", SUB_HEADER, [[100, 1.5, 0.5, 0.5]])
    with pytest.raises(UserError, match=r"row 1 \(line 2\), column 'winner_model_a': probability out of \[0, 1\]"):
        evaluate_files(str(above), str(labels))
    zero = write_csv(tmp_path / "pred3.csv", SUB_HEADER, [[100, 0, 0, 0]])
    with pytest.raises(UserError, match="sum to 0"):
        evaluate_files(str(zero), str(labels))
    missing = write_csv(tmp_path / "pred4.csv", SUB_HEADER, [[999, 0.3, 0.3, 0.4]])
    with pytest.raises(UserError, match=r"1 labelled ids have no prediction \(e.g. '100'\); "
                                        r"1 predicted ids are not in the labels \(e.g. '999'\)"):
        evaluate_files(str(missing), str(labels))
    no_probs = write_csv(tmp_path / "pred5.csv", ["id", "prob"], [[100, 0.3]])
    with pytest.raises(UserError, match="missing column"):
        evaluate_files(str(no_probs), str(labels))


def test_read_labels_from_arena_layout(tmp_path):
    conv = lambda s: [{"role": "user", "content": "q"}, {"role": "assistant", "content": s}]  # noqa: E731
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps({"question_id": f"x{i}", "winner": w, "conversation_a": conv("a"),
                                          "conversation_b": conv("b")})
                              for i, w in enumerate(["model_b", "tie", "model_a"])))
    lab = read_labels(path)
    assert lab["id"].tolist() == ["x0", "x1", "x2"] and lab["label"].tolist() == [1, 2, 0]
