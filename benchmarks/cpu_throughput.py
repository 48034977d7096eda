"""Benchmark: CPU training and inference tokens/s of a ~20M-parameter Llama-shaped classifier at 512 tokens.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cpu_throughput.py [--seq 512] [--batch 4] [--steps 3] [--threads 1]

The model is built by ``llm.loading.load_classifier`` (backbone ``random``: hidden 384, 8 layers,
6 heads / 2 KV heads, MLP 1024, vocab 16384 = ~19M parameters), so the figures include the
engine's own LoRA wiring (r=16, all linear layers) and the prediction batcher. Training is timed
as plain forward + backward + AdamW steps on the LoRA model (fp32); inference through
``llm.predict.logits_for_ids``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPE = {"model_type": "llama", "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 8,
         "num_attention_heads": 6, "num_key_value_heads": 2}
VOCAB = 16384


class _FixedTokenizer:
    """Just enough of a tokenizer for load_classifier: vocab size and pad id."""

    pad_token_id = 0
    padding_side = "right"

    def __len__(self) -> int:
        return VOCAB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from arena_kd.common.config_model import ModelConfig
    from arena_kd.llm.batching import collate
    from arena_kd.llm.loading import load_classifier
    from arena_kd.llm.predict import logits_for_ids

    wd = Path(tempfile.mkdtemp(prefix="cpu_tp_"))
    cfg = ModelConfig(backbone="random", random_init=SHAPE, gradient_checkpointing=False,
                      lora={"r": 16, "alpha": 32, "dropout": 0.0})
    tok = _FixedTokenizer()
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(4, VOCAB, size=a.seq)) for _ in range(a.batch * (a.steps + 1))]

    # ---- inference
    model, _, info = load_classifier(cfg, training=False, workdir=wd, tokenizer=tok)
    print(f"model: {info['total_params'] / 1e6:.1f}M parameters ({SHAPE['num_hidden_layers']} layers, "
          f"hidden {SHAPE['hidden_size']}), seq {a.seq}, batch {a.batch}, threads {a.threads}")
    logits_for_ids(model, seqs[: a.batch], 0, tokens_per_batch=a.seq * a.batch, max_batch_size=a.batch)  # warm-up
    t0 = time.perf_counter()
    logits_for_ids(model, seqs[a.batch :], 0, tokens_per_batch=a.seq * a.batch, max_batch_size=a.batch)
    dt = time.perf_counter() - t0
    n_tok = a.seq * a.batch * a.steps
    print(f"inference: {n_tok / dt:,.0f} tokens/s ({a.batch * a.steps / dt:.2f} rows/s, fp32)")
    del model

    # ---- training (LoRA, AdamW, one optimizer step per batch)
    model, _, info = load_classifier(cfg, training=True, workdir=wd, tokenizer=tok, seed=0)
    print(f"trainable: {info['trainable_params']:,} ({100 * info['trainable_fraction']:.2f}%)")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    labels = torch.tensor([i % 3 for i in range(a.batch)])

    def step(batch_seqs):
        b = collate(batch_seqs, 0, "right")
        out = model(**b)
        loss = torch.nn.functional.cross_entropy(out.logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(seqs[: a.batch])  # warm-up
    t0 = time.perf_counter()
    for s in range(a.steps):
        step(seqs[a.batch * (s + 1) : a.batch * (s + 2)])
    dt = time.perf_counter() - t0
    print(f"training (LoRA r=16, fp32, forward+backward+AdamW): {n_tok / dt:,.0f} tokens/s "
          f"({a.batch * a.steps / dt:.2f} rows/s)")


if __name__ == "__main__":
    main()
