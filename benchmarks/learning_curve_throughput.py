"""Training and prediction tokens/s of each demo backbone, fp32 against bf16 autocast, against this machine's GEMM
rate — measured interleaved in one process, so that a busy shared machine slows both variants alike.

    .venv/bin/python benchmarks/learning_curve_throughput.py [--backbone gemma3-270m] [--threads 1 2] [--steps 4]

The model is each backbone's base point of benchmarks/learning_curve.py (its LoRA or full fine-tuning, frozen
embedding for Gemma), loaded by ``llm.loading.load_classifier``; the rows are real rendered pairs of the sample
(``llm.pair_data.render_ids`` at the base max_length, batch 8, one orientation), batched by length as training does.
A training step = forward + backward + AdamW step; a prediction batch = ``llm.predict.logits_for_ids``. Rounds
alternate fp32 / bf16; the figures are medians over rounds, with process CPU seconds beside the wall time.
Prints one JSON line per (backbone, threads, mode) and a table; asserts nothing.
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
import torch  # noqa: E402

from benchmarks.learning_curve import BACKBONES, BASES, BATCH_SIZE, load_data, model_config  # noqa: E402
from benchmarks.learning_curve_flops import flops_per_token, gemm_rates  # noqa: E402

MODES = (("fp32", False), ("bf16", True))


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def measure(name: str, threads: list[int], steps: int, rounds: int, workdir: Path, out_path: Path | None) -> list[dict]:
    from arena_kd.common.config_model import RenderConfig
    from arena_kd.llm.batching import collate
    from arena_kd.llm.loading import load_classifier
    from arena_kd.llm.pair_data import render_ids
    from arena_kd.llm.predict import logits_for_ids

    base = {"backbone": name, **BASES[name]}
    cfg = model_config(base)
    model, tok, info = load_classifier(cfg, training=True, workdir=workdir, seed=0)
    train, _, _ = load_data(BATCH_SIZE * steps * 2, seed=42)
    ids = render_ids(train, tok, base["max_length"], RenderConfig(max_length=base["max_length"]), swap=False)
    ids.sort(key=len)  # length-grouped batches, as the trainer's sampler draws them
    batches = [ids[i:i + BATCH_SIZE] for i in range(0, BATCH_SIZE * steps, BATCH_SIZE)]
    labels = torch.tensor([i % 3 for i in range(BATCH_SIZE)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    fl = flops_per_token(model, cfg)
    rates = gemm_rates(threads)

    def train_steps(bf16: bool):
        model.train()
        for b in batches:
            batch = collate(b, tok.pad_token_id, "right")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(**batch)
            torch.nn.functional.cross_entropy(out.logits.float(), labels[: len(b)]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def predict(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits_for_ids(model, ids, tok.pad_token_id, tokens_per_batch=8192, max_batch_size=64)

    n_train = sum(len(s) for b in batches for s in b)
    n_pred = sum(len(s) for s in ids)
    out = []
    for t in threads:
        torch.set_num_threads(t)
        train_steps(False), predict(False)  # warm-up (kernel choice, allocator)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(rounds):
            for mode, bf16 in MODES:
                times.setdefault(("train", mode), []).append(_timed(lambda: train_steps(bf16)))
                times.setdefault(("predict", mode), []).append(_timed(lambda: predict(bf16)))
        for (kind, mode), ts in times.items():
            wall = float(np.median([w for w, _ in ts]))
            cpu = float(np.median([c for _, c in ts]))
            tokens = n_train if kind == "train" else n_pred
            flops = tokens * fl[kind]
            gemm, fp32 = rates[(mode, t)], rates[("fp32", t)]
            out.append({"backbone": name, "lora": base["lora"], "max_length": base["max_length"], "threads": t,
                        "kind": kind, "mode": mode, "tokens": tokens, "wall_s": round(wall, 2),
                        "cpu_s": round(cpu, 2), "tokens_per_s": round(tokens / wall, 1),
                        "tokens_per_cpu_s": round(tokens / cpu, 1), "gflops_per_cpu_s": round(flops / cpu / 1e9, 2),
                        "gemm_gflops_per_cpu_s": gemm["cpu"], "gemm_gflops_wall": gemm["wall"],
                        "fraction_of_gemm": round(flops / cpu / 1e9 / gemm["cpu"], 3),
                        "fraction_of_fp32_gemm": round(flops / cpu / 1e9 / fp32["cpu"], 3),
                        "trainable_params": info["trainable_params"], "load": round(os.getloadavg()[0], 2)})
            print(json.dumps(out[-1]), flush=True)
            if out_path is not None:  # appended as measured: a run stopped by its timeout keeps what it has
                with open(out_path, "a") as f:
                    f.write(json.dumps(out[-1]) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", nargs="*", default=list(BACKBONES), choices=list(BACKBONES))
    ap.add_argument("--threads", nargs="*", type=int, default=[1])
    ap.add_argument("--steps", type=int, default=4, help="training batches (of 8 rows) per timed round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "learning_curve")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    recs = []
    for name in a.backbone:
        recs += measure(name, a.threads, a.steps, a.rounds, a.workdir, a.out)
    print("\nPer CPU second of this process (the machine is shared; wall figures in the JSON lines):\n"
          "| backbone | threads | kind | mode | tokens/CPU s | tokens/s wall | GFLOP/CPU s | % of GEMM (same dtype) | "
          "% of fp32 GEMM | load |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in recs:
        print(f"| {r['backbone']} ({r['lora']}, {r['max_length']} tok) | {r['threads']} | {r['kind']} | {r['mode']} | "
              f"{r['tokens_per_cpu_s']:.0f} | {r['tokens_per_s']:.0f} | {r['gflops_per_cpu_s']} | "
              f"{r['fraction_of_gemm']:.0%} | {r['fraction_of_fp32_gemm']:.0%} | {r['load']} |")

if __name__ == "__main__":
    main()
