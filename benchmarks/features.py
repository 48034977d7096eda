"""Benchmark: stacker features (no embeddings) for a Kaggle-size training set (57k rows by default).

Rows are the bundled sample (data/sample/train.csv) replicated to ``--rows``; with ``--kaggle-lengths`` (default on)
every response is lengthened to the Kaggle train.csv means (prompt ~370 chars, response ~1,380 chars), since
the sample's answers are shorter. Prints seconds and rows/s for fitting the TF-IDF and computing the features.
Nothing is asserted.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/features.py [--rows 57477]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arena_kd.blend.features import compute_features, fit_similarity, join_turns  # noqa: E402
from arena_kd.data.readers import read_pairs  # noqa: E402

KAGGLE_MEAN_CHARS = {"prompt": 370, "response_a": 1380, "response_b": 1380}


def _stretch(turns, factor: float):
    """Lengthen each turn by appending its own beginning (keeps the text's character mix)."""
    if not isinstance(turns, list):
        return turns
    out = []
    for t in turns:
        if not isinstance(t, str) or not t:
            out.append(t)
            continue
        extra = int(len(t) * (factor - 1.0))
        reps = (t + "\n\n") * (extra // (len(t) + 2) + 1)
        out.append(t + "\n\n" + reps[:extra] if extra > 0 else t)
    return out


def make_rows(n_rows: int, kaggle_lengths: bool) -> pd.DataFrame:
    base = read_pairs(Path(__file__).resolve().parents[1] / "data" / "sample" / "train.csv")
    if kaggle_lengths:
        for col, target in KAGGLE_MEAN_CHARS.items():
            mean = np.mean([len(join_turns(v)) for v in base[col]])
            if mean < target:
                base[col] = [_stretch(v, target / mean) for v in base[col]]
    reps = -(-n_rows // len(base))
    df = pd.concat([base] * reps, ignore_index=True).iloc[:n_rows].reset_index(drop=True)
    df["id"] = [str(i) for i in range(len(df))]
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=57477)
    ap.add_argument("--no-kaggle-lengths", dest="kaggle_lengths", action="store_false")
    ap.add_argument("--threads", type=int, default=2, help="compute_features worker threads")
    args = ap.parse_args()
    df = make_rows(args.rows, args.kaggle_lengths)
    lens = {c: np.mean([len(join_turns(v)) for v in df[c]]) for c in KAGGLE_MEAN_CHARS}
    mb = sum(sum(len(join_turns(v)) for v in df[c]) for c in KAGGLE_MEAN_CHARS) / 1e6
    print(f"rows={len(df)}  mean chars: " + ", ".join(f"{c}={v:.0f}" for c, v in lens.items()) + f"  total={mb:.0f} MB")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    c0, t0 = time.process_time(), time.perf_counter()
    tfidf = fit_similarity(df)
    t1 = time.perf_counter()
    feats = compute_features(df, tfidf=tfidf, n_threads=args.threads)
    c2, t2 = time.process_time(), time.perf_counter()
    print(f"tfidf fit (<=10k rows sampled): {t1 - t0:.1f} s")
    print(f"compute_features ({args.threads} thread(s)): {t2 - t1:.1f} s  "
          f"({len(df) / (t2 - t1):,.0f} rows/s, {feats.shape[1]} features)")
    print(f"total: {t2 - t0:.1f} s wall, {c2 - c0:.1f} s CPU  ({len(df) / (t2 - t0):,.0f} rows/s)  target < 30 s wall"
          f"  [load average before: {load:.1f} on {os.cpu_count()} cores; a shared machine slows the wall time]")


if __name__ == "__main__":
    main()
