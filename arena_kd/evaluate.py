"""`arena-kd evaluate`: score a predictions CSV against labels (log loss, accuracy, calibration)."""

from __future__ import annotations

from typing import Any

import numpy as np

from arena_kd.errors import UserError
from arena_kd.metrics import accuracy, calibration_table, log_loss

PRED_COLUMNS = ["winner_model_a", "winner_model_b", "winner_tie"]


def read_predictions(path: str):
    """Predictions CSV (id, winner_model_a, winner_model_b, winner_tie) -> (ids, float64[n, 3]); rows must be valid probabilities."""
    from data.readers import read_sample_submission

    df = read_sample_submission(path)  # same layout: checks columns, numbers in [0, 1], unique ids
    probs = df[PRED_COLUMNS].to_numpy(dtype=np.float64)
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(sums <= 0)
    if len(bad):
        raise UserError(f"{path}: row {bad[0] + 1}: probabilities sum to 0")
    return df["id"].to_numpy(), probs


def evaluate_arrays(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """labels int[n] in {0,1,2}; probs float[n,3] (rows renormalised as Kaggle does)."""
    p = probs / probs.sum(axis=1, keepdims=True)
    return {
        "rows": int(len(labels)),
        "log_loss": log_loss(labels, p),
        "accuracy": accuracy(labels, p),
        "calibration": calibration_table(labels, p),
        "uniform_log_loss": float(np.log(3)),
    }


def format_evaluation(result: dict[str, Any]) -> str:
    lines = [
        f"rows: {result['rows']}",
        f"log loss: {result['log_loss']:.5f}   (uniform 1/3: {result['uniform_log_loss']:.5f})",
        f"accuracy: {result['accuracy']:.4f}",
        "calibration (mean predicted vs observed):",
    ]
    for c in result["calibration"]:
        lines.append(f"  {c['class']:<4} predicted {c['mean_pred']:.4f}  observed {c['observed']:.4f}  gap {c['mean_pred'] - c['observed']:+.4f}")
    return "\n".join(lines)


def evaluate_files(pred_csv: str, labels_csv: str) -> dict[str, Any]:
    """Print and return log loss, accuracy and per-class calibration. Ids must match exactly (UserError otherwise)."""
    from data.readers import read_labels

    ids, probs = read_predictions(pred_csv)
    labels = read_labels(labels_csv)
    pred_ids, label_ids = set(ids), set(labels["id"])
    if pred_ids != label_ids:
        missing = sorted(label_ids - pred_ids)
        extra = sorted(pred_ids - label_ids)
        parts = []
        if missing:
            parts.append(f"{len(missing)} labelled ids have no prediction (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} predicted ids are not in the labels (e.g. {extra[0]!r})")
        raise UserError(f"{pred_csv}: ids do not match {labels_csv}: " + "; ".join(parts))
    y = labels.set_index("id").loc[ids, "label"].to_numpy()
    result = evaluate_arrays(y, probs)
    print(format_evaluation(result))
    return result
