"""Submission machinery on CPU: rows/s of the whole run, and whether a real wall-clock budget is kept.

Builds a tiny random Gemma2 student export (the real export format, arena_kd.llm.export.save_export) unless
--workdir already holds one, then runs ``run_submission`` on the sample test set:
  1. with a generous budget (every row through the student with TTA);
  2. with half of run 1's student time as the budget, which must force the degradation;
and prints wall time, rows/s, the per-path counts and elapsed-vs-budget. Nothing is asserted.

    .venv/bin/python benchmarks/submission_budget.py [--rows 496] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_tiny_export(cfg, texts):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma2Config, Gemma2ForSequenceClassification, PreTrainedTokenizerFast

    from arena_kd.llm.export import save_export

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                     eos_token="<eos>")
    torch.manual_seed(0)
    mcfg = Gemma2Config(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_labels=3,
                        pad_token_id=hf_tok.pad_token_id, bos_token_id=hf_tok.bos_token_id,
                        eos_token_id=hf_tok.eos_token_id, attn_implementation="eager")
    model = Gemma2ForSequenceClassification(mcfg).eval()
    return save_export(cfg.workdir_path / "student" / "export", cfg, merged_model=model, tokenizer=hf_tok,
                       settings_load={"attn_implementation": "eager", "padding_side": "left",
                                      "pad_token_id": hf_tok.pad_token_id},
                       hashes={})


def main() -> None:
    import pandas as pd

    from arena_kd.common.config import load_config
    from arena_kd.submission.run import run_submission

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=496)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()
    logging.getLogger("arena_kd").setLevel(logging.WARNING)
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="bench_submission_"))
    test = tmp / "test.csv"
    df = pd.read_csv(ROOT / "data/sample/test.csv").head(args.rows)
    df.to_csv(test, index=False)
    cfg = load_config(ROOT / "configs/smoke.yaml", [
        f"workdir={tmp}", f"data.test={test}", "data.sample_submission=null",
        f"data.train={ROOT / 'data/sample/train.csv'}",
        f"submission.predict.max_length={args.max_length}", "submission.degraded_max_length=64",
        "submission.predict.tokens_per_batch=4096", "submission.chunk_rows=64", "submission.reserve_s=1",
    ])
    if not (tmp / "student" / "export" / "export.json").is_file():
        build_tiny_export(cfg, df["prompt"].tolist() + df["response_a"].tolist() + df["response_b"].tolist())

    t0 = time.perf_counter()
    full = run_submission(cfg, out=str(tmp / "full.csv"), time_budget="1h", progress=False)
    t_full = time.perf_counter() - t0
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"rows: {len(df)}  max_length: {args.max_length}  torch threads: {threads}")
    print(f"full budget: {t_full:.1f} s wall, {len(df) / t_full:.1f} rows/s, paths {full.counts}")

    budget = max(2.0, 0.5 * t_full)
    t0 = time.perf_counter()
    half = run_submission(cfg, out=str(tmp / "half.csv"), time_budget=f"{budget:.1f}", progress=False)
    t_half = time.perf_counter() - t0
    verdict = "inside" if t_half <= budget else "OVER"
    print(f"budget {budget:.1f} s: {t_half:.1f} s wall ({verdict} the budget), paths {half.counts}")


if __name__ == "__main__":
    main()
