"""Learnability through the project's own training path (issue 21): every backbone, trained by
``kfold.fold_model.train_and_predict`` (``llm.train.train_classifier`` + ``predict_rows``, what the k-fold stages call)
on rows of data/sample/train.csv,

- **overfits 32 rows**: its log loss on the rows it trained on falls far below their class prior's;
- **learns a trivially learnable target**: the row's source (MT-Bench or HH-RLHF, ``data.readers``' ``source``
  column) put on two of the three classes, scored on held-out rows whose prompt groups never occur in training (the
  folds' grouping, ``data.folds.make_folds``): the paired cluster-bootstrap interval of held-out log loss minus the
  training rows' constant excludes zero;
- and, the control that keeps that check from passing vacuously: the same target with its labels shuffled over the
  training rows does NOT beat the constant on the held-out rows.

The tiny random Gemma2 / Llama / BERT (tests/conftest.py architectures, the project's ``bpe:`` tokenizer trained on
the training texts) always run. The real demo backbones (``demo_backbone`` marker, deselected by default:
minutes each) run with ``make test-learnability``; each is skipped with its reason where its package is absent.
Each check prints its figures (``pytest -s``); benchmarks/RESULTS.md "Learnability" records them.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import learning_curve as lc  # noqa: E402

SOURCE_CLASS = {"mtbench_human": 0, "hh_harmless": 1}
"""The trivially learnable target: A wins on every MT-Bench row, B wins on every HH-RLHF row. Training and prediction
use one orientation (no swap augmentation, no TTA): a swap flips A/B but not the source, so it would blur the target."""
OVERFIT_ROWS = 32
OVERFIT_MAX_LOSS = 0.35
"""Overfitting: the train log loss must fall below this (the 32 rows' class prior scores ~1.0: a model at 0.35 puts
~70% on the right class on average, which no constant and no near-constant model can)."""
SOURCE_FOLDS = 3  # fold 0 held out (a third of the rows), the other two train


@functools.cache
def _labelled_sample():
    from arena_kd.data.readers import read_pairs

    df = read_pairs(lc.TRAIN, seed=0)
    return df[df["label"].notna()].reset_index(drop=True)


def _fit_predict(model_cfg, train, held, tmp: Path, *, epochs: float, lr: float, max_length: int,
                 autocast: str = "none", batch_size: int = 8, threads: int = 1, workdir: Path | None = None
                 ) -> np.ndarray:
    """Probabilities [len(held), 3] after training on ``train`` through the k-fold stages' own fold function.
    ``workdir``: where the caches live (GGUF copies, random backbones, tokenizers); the run itself is under ``tmp``,
    never resumed from an earlier one."""
    from arena_kd.common.config_model import PredictConfig, RenderConfig, TrainConfig
    from arena_kd.common.metrics import softmax
    from arena_kd.kfold.fold_model import train_and_predict
    from arena_kd.llm.train import frame_texts

    tc = TrainConfig(epochs=epochs, learning_rate=lr, batch_size=batch_size, grad_accum=1, warmup_ratio=0.0,
                     swap_augmentation="none", autocast=autocast, logging_steps=10)
    rc = RenderConfig(max_length=max_length, truncation="budget")
    pc = PredictConfig(tta=False, autocast=autocast)
    # one tokenizer for the training and the held-out rows, as the k-fold stages train a bpe: tokenizer on all rows
    texts = frame_texts(pd.concat([train, held], ignore_index=True))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # 1 by default: the suite may share the machine with other jobs
    try:
        tta, _, _ = train_and_predict(model_cfg, tc, pc, rc, train, held, tmp / "run", seed=0,
                                      workdir=workdir or tmp, tokenizer_texts=texts)
    finally:
        torch.set_num_threads(before)  # the rest of the suite keeps its own setting
    return softmax(tta["avg"])


def overfit_check(model_cfg, tmp: Path, **fit) -> dict:
    """Train on 32 labelled rows, score the same rows: {"logloss", "prior", "wall_s"}."""
    from arena_kd.common.metrics import log_loss
    from arena_kd.kfold.training_data import subset_rows

    rows = subset_rows(_labelled_sample(), OVERFIT_ROWS, seed=0)
    t0 = time.perf_counter()
    probs = _fit_predict(model_cfg, rows, rows, tmp, **fit)
    prior, _ = lc.constants(rows, rows)
    y = rows["label"].astype(int).to_numpy()
    out = {"logloss": log_loss(y, probs), "prior": log_loss(y, prior), "wall_s": time.perf_counter() - t0}
    print(f"\n[learnability] overfit {OVERFIT_ROWS} rows: train log loss {out['logloss']:.4f} vs prior "
          f"{out['prior']:.4f}; {out['wall_s']:.0f} s")
    return out


def source_rows(n_rows: int | None, shuffle: bool = False):
    """(train, held, held prompt groups): ``n_rows`` sample rows labelled by source, split by the folds' grouping;
    ``shuffle`` permutes the training labels (the negative control)."""
    from arena_kd.data.folds import make_folds, prompt_groups
    from arena_kd.kfold.training_data import subset_rows

    df = subset_rows(_labelled_sample(), n_rows, seed=1).copy()
    df["label"] = df["source"].map(SOURCE_CLASS).astype("Int64")
    fold = make_folds(df, SOURCE_FOLDS, seed=0)["fold"].to_numpy()
    train, held = df[fold != 0].reset_index(drop=True), df[fold == 0].reset_index(drop=True)
    assert not set(prompt_groups(train)) & set(prompt_groups(held))
    if shuffle:
        train["label"] = train["label"].sample(frac=1.0, random_state=0).to_numpy()
    return train, held, prompt_groups(held)


def source_check(model_cfg, tmp: Path, n_rows: int | None, shuffle: bool = False, **fit) -> dict:
    """Held-out log loss of the source target vs the training rows' constant: {"logloss", "constant", "diff",
    "verdict", "wall_s"} (diff: paired cluster bootstrap over prompt groups, model − constant)."""
    from arena_kd.common.metrics import log_loss, log_loss_difference, verdict

    train, held, groups = source_rows(n_rows, shuffle)
    t0 = time.perf_counter()
    probs = _fit_predict(model_cfg, train, held, tmp, **fit)
    constant, _ = lc.constants(train, held)
    y = held["label"].astype(int).to_numpy()
    diff = log_loss_difference(y, probs, constant, groups, seed=0)
    out = {"logloss": log_loss(y, probs), "constant": log_loss(y, constant), "diff": diff, "verdict": verdict(diff),
           "wall_s": time.perf_counter() - t0}
    what = "shuffled source labels" if shuffle else "source"
    print(f"\n[learnability] {what}: {len(train)} train / {len(held)} held-out rows ({len(set(groups))} groups): "
          f"held-out log loss {out['logloss']:.4f} vs constant {out['constant']:.4f}, diff {diff['mean']:+.4f} "
          f"[{diff['lo']:+.4f}, {diff['hi']:+.4f}] ({out['verdict']}); {out['wall_s']:.0f} s")
    return out


# ---- tiny random backbones of the real architectures (always run) ---------------------------------------------

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 512}
TINY_OVERFIT = {"epochs": 60, "lr": 3e-3, "max_length": 64}
TINY_SOURCE = {"n_rows": None, "epochs": 2, "lr": 5e-4, "max_length": 256}
"""The tiny source check reads all labelled sample rows (1,305 train / 653 held-out) at 256 tokens, on the BERT-like
encoder. Measured here (benchmarks/RESULTS.md "Learnability"): at 128 tokens its interval did not exclude zero; with
the shuffled step order (llm.trainer) lr 1e-3 reached −0.262 [−0.519, +0.010] (one overconfident cluster), lr 5e-4
−0.014 [−0.025, −0.001], lr 3e-4 or 1 epoch did not beat the constant (2026-12-05): a narrow margin; the
tiny random decoders (Gemma2, Llama; last-token pooling, no dropout) learn the training rows' MT-Bench questions
instead of the source at every setting tried (held-out MT-Bench rows of unseen questions are called HH), so for
them only the overfitting check runs here; the real decoders (SmolLM2, Gemma 3) pass both checks below."""


def _tiny(base, arch: str):
    """A tiny random backbone, fully fine-tuned, with the project's ``bpe:`` tokenizer trained on the rows' texts
    (the fixtures' tokenizer knows only their synthetic words)."""
    update = {"tokenizer": "bpe:2000", "lora": base.lora.model_copy(update={"enabled": False})}
    if arch == "bert":
        update["random_init"] = TINY_BERT
    return base.model_copy(update=update)


@pytest.fixture(params=["gemma2", "llama", "bert"])
def tiny_cfg(request, tiny_gemma2_cfg, tiny_llama_cfg):
    return _tiny(tiny_gemma2_cfg if request.param == "gemma2" else tiny_llama_cfg, request.param)


def test_tiny_backbone_overfits_32_rows(tiny_cfg, tmp_path):
    r = overfit_check(tiny_cfg, tmp_path, **TINY_OVERFIT)
    assert r["prior"] > 0.9  # the labels are not near-constant: overfitting has something to remove
    assert r["logloss"] < OVERFIT_MAX_LOSS, r


def test_tiny_encoder_learns_the_source_on_unseen_questions(tiny_llama_cfg, tmp_path):
    r = source_check(_tiny(tiny_llama_cfg, "bert"), tmp_path, **TINY_SOURCE)
    assert r["verdict"] == "a better", r  # the interval of (model − constant) lies below zero


def test_shuffled_source_labels_do_not_generalise(tiny_llama_cfg, tmp_path):
    """Negative control: the same training with the source labels permuted over the training rows cannot beat the
    constant on held-out rows — so the check above measures learning of the target, not an artefact of the split,
    the tokenizer or the scoring."""
    r = source_check(_tiny(tiny_llama_cfg, "bert"), tmp_path, shuffle=True, **TINY_SOURCE)
    assert r["verdict"] != "a better", r


# ---- the real demo backbones (make test-learnability) -----------------------------------------------------------

DEMO_FIT = {
    # rows of 64 tokens (Gemma 270M trains ~60-90 tokens/s here on one thread); each backbone's own settings from
    # benchmarks/learning_curve.py (LoRA placement, bf16 autocast for Gemma) with the learning rates below
    "minilm-l6": {"max_length": 64, "lr": 3e-4},
    "smollm2-135m": {"max_length": 64, "lr": 2e-3},
    "gemma3-270m": {"max_length": 64, "lr": 1e-4, "autocast": "bf16"},
}
DEMO_OVERFIT_EPOCHS = 10
DEMO_SOURCE_ROWS = 300  # ~200 train (1 epoch) / ~100 held-out


def _demo_cfg(name: str):
    package = lc.BACKBONES[name]["backbone"].removeprefix("pkg://").split("/")[0]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"demo package {package} not installed (make setup-demo installs it)")
    return lc.model_config({"backbone": name, **lc.BASES[name]})


@pytest.fixture(scope="session")
def demo_workdir():
    """Caches shared by the demo checks and kept between runs (the assembled Gemma GGUF is 253 MB)."""
    d = ROOT / "runs" / "learnability"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.mark.demo_backbone
@pytest.mark.parametrize("name", list(DEMO_FIT))
def test_demo_backbone_overfits_32_rows(name, tmp_path, demo_workdir):
    cfg = _demo_cfg(name)
    r = overfit_check(cfg, tmp_path, epochs=DEMO_OVERFIT_EPOCHS, workdir=demo_workdir, **DEMO_FIT[name])
    assert r["logloss"] < OVERFIT_MAX_LOSS, r


@pytest.mark.demo_backbone
@pytest.mark.parametrize("name", list(DEMO_FIT))
def test_demo_backbone_learns_the_source_on_unseen_questions(name, tmp_path, demo_workdir):
    cfg = _demo_cfg(name)
    r = source_check(cfg, tmp_path, n_rows=DEMO_SOURCE_ROWS, epochs=1, workdir=demo_workdir, **DEMO_FIT[name])
    assert r["verdict"] == "a better", r
