"""Reference predictions of the trained student(s) and the fold soup's distance from them.

The export is checked against what was actually trained and scored out of fold: for ``final: full`` the trained
model itself, for ``final: fold_soup`` the mean of the k fold models' probabilities (the stacker and temperature
were fitted on fold-model outputs). :func:`soup_drift` measures how far each kind of soup (``exact``: rank
concatenation, ``average``: element-wise A/B mean) lands from that mean on the reference rows, beside how far a
single fold model is from it — the figures in README "Fold soup".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.common.config_model import ModelConfig
from arena_kd.common.keys import LOGIT_COLUMNS
from arena_kd.common.metrics import softmax
from arena_kd.llm.export import PROB_COLUMNS, prob_drift, reference_logits
from arena_kd.llm.placement import free_accelerator_memory


def adapter_logits(model_cfg: ModelConfig, adapter: str | Path, input_ids: list[list[int]], workdir,
                   answer_spans: list | None = None) -> np.ndarray:
    """float32 [n,3] logits of one trained adapter on its trained base (same quantization and dtype as training);
    ``answer_spans`` as ``llm.export.reference_logits``."""
    from arena_kd.llm.loading import load_classifier
    from arena_kd.llm.tokenizer import adapter_tokenizer

    model, _, _ = load_classifier(model_cfg, training=False, workdir=workdir, adapter=str(adapter),
                                  tokenizer=adapter_tokenizer(adapter))
    model.eval()
    try:
        return reference_logits(model, input_ids, answer_spans)
    finally:
        del model
        free_accelerator_memory()


def reference_table(ids: pd.Series, input_ids: list[list[int]], probs: np.ndarray,
                    answer_spans: list | None = None) -> pd.DataFrame:
    """id, input_ids, answer_spans (a0, a1, b0, b1; when given), logit_* (log of the reference probabilities),
    prob_*: the export's reference_logits.parquet."""
    ref = pd.DataFrame({"id": ids.astype(str).to_numpy(), "input_ids": [list(map(int, r)) for r in input_ids]})
    if answer_spans is not None:
        ref["answer_spans"] = [list(map(int, r)) for r in answer_spans]
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    for j, (logit_col, prob_col) in enumerate(zip(LOGIT_COLUMNS, PROB_COLUMNS)):
        ref[logit_col] = logp[:, j].astype(np.float32)
        ref[prob_col] = probs[:, j].astype(np.float64)
    return ref


def fold_mean_probs(fold_logits: list[np.ndarray]) -> np.ndarray:
    """float64 [n,3]: mean over the fold models of their softmax probabilities."""
    return np.mean([softmax(np.asarray(z, dtype=np.float64)) for z in fold_logits], axis=0)


def soup_drift(model_cfg: ModelConfig, fold_dirs: list[Path], fold_logits: list[np.ndarray], input_ids: list[list[int]],
               soup_dir: Path, workdir, modes: tuple[str, ...] = ("exact", "average"),
               answer_spans: list | None = None) -> dict[str, Any]:
    """|Δprob| (max, mean) from the fold-model mean for each soup mode and for each single fold model.

    Every soup is built under ``soup_dir/<mode>`` and scored on its trained base like the folds were.
    """
    from arena_kd.llm.lora import soup_adapters

    mean = fold_mean_probs(fold_logits)
    out: dict[str, Any] = {"rows": len(input_ids), "folds": len(fold_dirs),
                           "reference": "mean of the fold models' probabilities"}
    singles = [prob_drift(z, mean) for z in fold_logits]
    out["single_fold"] = {
        "max_abs_prob_diff": max(d["max_abs_prob_diff"] for d in singles),
        "mean_abs_prob_diff": float(np.mean([d["mean_abs_prob_diff"] for d in singles])),
    }
    for mode in modes:
        d = soup_adapters(fold_dirs, soup_dir / mode, mode)
        drift = prob_drift(adapter_logits(model_cfg, d, input_ids, workdir, answer_spans), mean)
        out[mode] = {k: drift[k] for k in ("max_abs_prob_diff", "mean_abs_prob_diff", "nonfinite_rows")}
    return out


def describe_soup(d: dict[str, Any]) -> str:
    parts = [f"{m} max {d[m]['max_abs_prob_diff']:.4f} / mean {d[m]['mean_abs_prob_diff']:.4f}"
             for m in ("exact", "average") if m in d]
    s = d["single_fold"]
    return (f"|Δp| from the mean of {d['folds']} fold models on {d['rows']} rows: " + ", ".join(parts)
            + f"; a single fold model: max {s['max_abs_prob_diff']:.4f} / mean {s['mean_abs_prob_diff']:.4f}")
