"""`arena-kd evaluate`: a 95% prompt-bootstrap interval, and per-source rows when the labels carry a source column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena_kd.evaluate import evaluate_files


def test_evaluate_reports_interval_and_per_source(tmp_path, capsys):
    labels = pd.read_csv("data/sample/test_labels.csv")
    labels = pd.concat([labels.head(60), labels.tail(60)], ignore_index=True)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    pred = pd.DataFrame({"id": labels["id"], "winner_model_a": 0.4, "winner_model_b": 0.4, "winner_tie": 0.2})
    pred.to_csv(tmp_path / "pred.csv", index=False)
    res = evaluate_files(str(tmp_path / "pred.csv"), str(tmp_path / "labels.csv"))
    lo, hi = res["log_loss_95"]
    assert lo < res["log_loss"] < hi and res["interval_unit"] == "prompt"
    per = {r["source"]: r for r in res["per_source"]}
    assert set(per) == {"mtbench_human", "hh_harmless"} and sum(r["rows"] for r in per.values()) == 120
    assert per["hh_harmless"]["log_loss"] == pytest.approx(-np.log(0.4))  # no ties in HH: every row scores 0.4
    out = capsys.readouterr().out
    assert "source hh_harmless" in out and "95% interval" in out


def test_evaluate_without_source_column_has_no_per_source(tmp_path):
    labels = pd.read_csv("data/sample/test_labels.csv").head(40).drop(columns=["source"])
    labels.to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame({"id": labels["id"], "winner_model_a": 0.3, "winner_model_b": 0.3,
                  "winner_tie": 0.4}).to_csv(tmp_path / "p.csv", index=False)
    res = evaluate_files(str(tmp_path / "p.csv"), str(tmp_path / "labels.csv"))
    assert "per_source" not in res and np.isfinite(res["log_loss_95"][0])
