"""Train one fold's classifier with the llm/ engine and predict rows with A/B-swap TTA."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from arena_kd.common.config_model import ModelConfig, PredictConfig, RenderConfig, TrainConfig
from arena_kd.common.io import jsonable


def predict_rows(model, tokenizer, df: pd.DataFrame, predict_cfg: PredictConfig,
                 render_cfg: RenderConfig) -> dict[str, np.ndarray]:
    """{"orig", "swap", "avg"} float32 [n,3] logits for ``df`` in input order.

    Without TTA (predict.tta=false) only the original orientation is run: avg = orig, swap = NaN.
    """
    from arena_kd.llm.predict import predict_logits, predict_tta

    kw = dict(
        max_length=predict_cfg.max_length or render_cfg.max_length,
        truncation=render_cfg.truncation,
        prompt_fraction=render_cfg.prompt_fraction,
        template=render_cfg.template,
        tokens_per_batch=predict_cfg.tokens_per_batch,
        max_batch_size=predict_cfg.max_batch_size,
    )
    with autocast(model, predict_cfg.autocast):
        if predict_cfg.tta:
            out = predict_tta(model, tokenizer, df, **kw)
            return {k: np.asarray(out[k], dtype=np.float32) for k in ("orig", "swap", "avg")}
        orig = np.asarray(predict_logits(model, tokenizer, df, swap=False, **kw), dtype=np.float32)
    return {"orig": orig, "swap": np.full_like(orig, np.nan), "avg": orig}


def autocast(model, kind: str):
    """A bf16 autocast context on the model's device for ``kind`` 'bf16' (predict.autocast); a no-op for 'none'."""
    import torch

    from arena_kd.llm.predict import model_device

    return torch.autocast(model_device(model).type, dtype=torch.bfloat16, enabled=kind == "bf16")


def train_and_predict(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    predict_cfg: PredictConfig,
    render_cfg: RenderConfig,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    out_dir: Path,
    *,
    seed: int,
    workdir: str | Path,
    loss_fn: Callable | None = None,
    also_predict: pd.DataFrame | None = None,
    tokenizer_texts: list[str] | None = None,
    init_seed: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], Any]:
    """Fine-tune on ``train_df`` (eval on ``valid_df``), predict ``valid_df`` with TTA.

    Returns (tta dict of [n_valid,3], meta {adapter_dir, train_metrics}, extra predictions dict or None).
    """
    from arena_kd.llm.train import train_classifier

    # The held-out fold is predicted (with TTA) right below; an end-of-training Trainer evaluation on the same
    # rows would only repeat that work, so the Trainer evaluates only when periodic evaluation is asked for.
    eval_df = valid_df if train_cfg.eval_steps else None
    result = train_classifier(
        model_cfg, train_cfg, render_cfg, train_df, eval_df, out_dir, seed=seed, workdir=workdir, loss_fn=loss_fn,
        tokenizer_texts=tokenizer_texts,  # one bpe: tokenizer for every fold (fold soup needs a shared vocabulary)
        init_seed=init_seed,  # one head/LoRA-A initialisation for every fold (fold soup needs a shared start)
    )
    model, tokenizer = result.model, result.tokenizer
    if hasattr(model, "eval"):
        model.eval()
    tta = predict_rows(model, tokenizer, valid_df, predict_cfg, render_cfg)
    extra = None
    if also_predict is not None and len(also_predict):
        extra = predict_rows(model, tokenizer, also_predict, predict_cfg, render_cfg)
    meta = {
        "adapter_dir": str(result.adapter_dir) if result.adapter_dir is not None else None,
        "train_metrics": jsonable(result.metrics),
    }
    return tta, meta, extra
