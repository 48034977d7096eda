"""`arena-kd evaluate`: score a predictions CSV against labels (log loss, accuracy, calibration)."""

from __future__ import annotations

from typing import Any

import numpy as np

from arena_kd.common.errors import UserError
from arena_kd.common.keys import LABELS
from arena_kd.common.metrics import accuracy, calibration_table, log_loss


def read_predictions(path: str):
    """Predictions CSV (id, winner_model_a, winner_model_b, winner_tie) -> (ids, float64[n, 3]); rows must be valid
    probabilities."""
    from arena_kd.data.readers import read_sample_submission

    df = read_sample_submission(path)  # same layout: checks columns, numbers in [0, 1], unique ids
    probs = df[list(LABELS)].to_numpy(dtype=np.float64)
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
    interval = ""
    if "log_loss_95" in result and np.isfinite(result["log_loss_95"][0]):
        lo, hi = result["log_loss_95"]
        interval = f"   95% interval [{lo:.5f}, {hi:.5f}] (bootstrap over {result['interval_unit']}s)"
    lines = [
        f"rows: {result['rows']}",
        f"log loss: {result['log_loss']:.5f}   (uniform 1/3: {result['uniform_log_loss']:.5f})" + interval,
        f"accuracy: {result['accuracy']:.4f}",
        "calibration (mean predicted vs observed):",
    ]
    for c in result["calibration"]:
        lines.append(f"  {c['class']:<4} predicted {c['mean_pred']:.4f}  observed {c['observed']:.4f}  "
                     f"gap {c['mean_pred'] - c['observed']:+.4f}")
    for r in result.get("per_source", []):
        lines.append(f"source {r['source']}: {r['rows']} rows, log loss {r['log_loss']:.5f} "
                     f"[{r['lo']:.5f}, {r['hi']:.5f}], "
                     f"accuracy {r['accuracy']:.4f} (uniform {result['uniform_log_loss']:.5f})")
    return "\n".join(lines)


def evaluate_files(pred_csv: str, labels_csv: str) -> dict[str, Any]:
    """Print and return log loss, accuracy and per-class calibration. Ids must match exactly (UserError otherwise)."""
    from arena_kd.data.readers import read_labels

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
    result.update(_intervals_and_sources(labels_csv, ids, y, probs))
    print(format_evaluation(result))
    return result


def _intervals_and_sources(labels_csv: str, ids: np.ndarray, y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """95% prompt-bootstrap interval of the log loss and, when the labels file has a ``source`` column, per-source
    rows (log loss, interval, the uniform answer's 1.0986 for reference). Labels without prompts resample rows."""
    import pandas as pd

    from arena_kd.common.metrics import log_loss_interval

    groups, sources = None, None
    try:
        from arena_kd.data.folds import prompt_groups
        from arena_kd.data.readers import read_pairs

        pairs = read_pairs(labels_csv).set_index("id").loc[ids]
        groups = prompt_groups(pairs.reset_index())
        head = pd.read_csv(labels_csv, nrows=0) if str(labels_csv).endswith(".csv") else None
        if head is None or "source" in head.columns:
            sources = pairs["source"].astype(str).to_numpy()
    except Exception:  # noqa: BLE001 - a labels file without prompts (id + winners only): row bootstrap, no sources
        pass
    p = probs / probs.sum(axis=1, keepdims=True)
    ci = log_loss_interval(y, p, groups)
    out: dict[str, Any] = {"log_loss_95": [ci["lo"], ci["hi"]],
                           "interval_unit": "prompt" if groups is not None else "row"}
    if sources is not None and len(set(sources.tolist())) > 1:
        per = []
        for src in sorted(set(sources.tolist())):
            m = sources == src
            c = log_loss_interval(y[m], p[m], None if groups is None else groups[m])
            per.append({"source": src, "rows": int(m.sum()), "log_loss": c["mean"], "lo": c["lo"], "hi": c["hi"],
                        "accuracy": accuracy(y[m], p[m])})
        out["per_source"] = per
    return out
