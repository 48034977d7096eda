"""GPU throughput of a Gemma2-9B-shaped classifier with random weights (no download), for the planner's calibration.

    .venv/bin/python benchmarks/gpu_throughput.py [--layers N|auto] [--seqs 1024 2000]
        [--precisions bf16 fp16 8bit 4bit] [--batch-tokens 8192] [--steps 2] [--train-seq 1024] [--train-batch 2]
        [--lora-r 64] [--rehearsal] [--tiny] [--out planner/calibration_data/<card>-<date>.json]
    .venv/bin/python benchmarks/gpu_throughput.py --dry-run --out /tmp/r.json  # tiny shapes on CPU: logic, not figures

Usually run through ``benchmarks/gpu_check.sh`` (one command for a short GPU window). What it does (this file is the
CLI and the results file; the work lives in the sibling modules named):

1. builds the random bf16 weights ONCE (on the GPU, then parked in CPU memory: 18.5 GB for all 42 layers; never
   written to disk) and, for every precision, loads them onto the GPU from that copy — 16-bit by a cast,
   bitsandbytes 8-bit / 4-bit (NF4) by swapping each decoder Linear for its bnb module (quantised on the way in)
   (``gpu_model.py``);
2. inference: tokens/s and peak memory at every ``--seqs`` length (full-length rows under ``--batch-tokens``)
   (``gpu_measure.py``);
3. a QLoRA step: NF4 base, LoRA r=``--lora-r`` on all linear layers, gradient checkpointing, ``--train-seq`` tokens,
   paged 8-bit AdamW when bitsandbytes has CUDA (torch AdamW otherwise, recorded) (``gpu_measure.py``);
4. ``--rehearsal``: the smoke pipeline (teachers → distill → export → stack → submission) on CUDA with fp16 autocast
   and paged 8-bit AdamW, then the GPU-marked tests — what cannot run is skipped and named (``gpu_rehearsal.py``).

With ``--layers N`` < 42 the figures are also scaled to 42 layers (``*_full``: time x 42/N; memory: the
layer-proportional part x 42/N). Results go to one file in the schema of :mod:`arena_kd.planner.calibration`
(the planner reads it: ``arena-kd plan --calibration FILE``; copy it into ``planner/calibration_data/`` to ship it).
Without CUDA (and without ``--dry-run``) it says so and exits 0. Figures are printed and written; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message="MatMul8bitLt")  # bnb: fp16 cast notice, once per call
warnings.filterwarnings("ignore", category=FutureWarning)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when loaded from a file path

import torch  # noqa: E402
from gpu_measure import measure_inference, measure_qlora_step  # noqa: E402
from gpu_model import GEMMA2_9B, TINY, bnb_status, build_master, gib, load_precision, reset_memory  # noqa: E402
from gpu_rehearsal import rehearsal  # noqa: E402

from arena_kd.llm.devices import native_bf16  # noqa: E402
from arena_kd.planner.calibration import Record, Results, now_utc, write_results  # noqa: E402


def _software() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for mod in ("transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes on CPU: checks the script, measures nothing real")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny shapes on CUDA (the GPU test): checks the CUDA paths in seconds")
    ap.add_argument("--layers", default="auto",
                    help="decoder layers to build (auto: 42 with >= 60 GiB of GPU memory, else 8)")
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 2000])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp16", "8bit", "4bit"],
                    choices=["bf16", "fp16", "8bit", "4bit"])
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--train-seq", type=int, default=1024)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--rehearsal", action="store_true", help="also run the smoke pipeline and the GPU tests on CUDA")
    ap.add_argument("--rehearsal-timeout", type=int, default=180,
                    help="seconds per rehearsal step (at most half what --budget-s leaves)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="whole-run budget: the rehearsal steps shrink to fit it")
    ap.add_argument("--out", default=None, help="results file (default planner/calibration_data/<card>-<date>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    started = time.perf_counter()

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device visible; nothing measured "
              "(run benchmarks/gpu_check.sh on a GPU machine).")
        return 0
    dev = torch.device("cpu" if a.dry_run else "cuda")
    a.dry_run = a.dry_run or a.tiny  # tiny figures never calibrate the planner
    shape = dict(TINY if a.dry_run else GEMMA2_9B)
    if a.dry_run:
        a.seqs = sorted({min(s // 32, 64) for s in a.seqs})  # 1024, 2000 -> 32, 62: two short lengths
        a.train_seq, a.batch_tokens = min(a.train_seq, 64), min(a.batch_tokens, 256)
        a.lora_r, a.steps = min(a.lora_r, 8), 1
    card = torch.cuda.get_device_name(dev) + (" (tiny)" if a.tiny else "") if dev.type == "cuda" else "cpu (dry run)"
    card_gib = gib(torch.cuda.get_device_properties(dev).total_memory) if dev.type == "cuda" else None
    full = shape["num_hidden_layers"]
    layers = (full if (card_gib or 0) >= 60 or a.dry_run else 8) if a.layers == "auto" else min(int(a.layers), full)
    compute = torch.bfloat16 if dev.type == "cuda" and native_bf16(dev) else torch.float16  # never emulated bf16 (T4)
    if dev.type == "cpu":
        compute = torch.bfloat16  # CPU autocast supports bf16
    print(f"device: {card}; Gemma2-9B shape, {layers}/{full} layers; compute {compute}", flush=True)
    skipped: list[dict] = []
    records: list[Record] = []
    steps: list[dict] = []
    date = now_utc()
    slug = "".join(c if c.isalnum() else "-" for c in card.lower()).strip("-")
    out = Path(a.out) if a.out else ROOT / "planner" / "calibration_data" / f"{slug}-{date[:10]}.json"
    print(f"results file: {out}", flush=True)

    def save() -> None:  # after every measurement: a window that ends early still leaves a readable file
        write_results(out, Results(card=card, date=date, records=records, card_memory_gib=card_gib,
                                   dry_run=a.dry_run, gpu_count=torch.cuda.device_count() if dev.type == "cuda" else 0,
                                   software=_software(), skipped=skipped, steps=steps))

    t0 = time.perf_counter()
    kw, state = build_master(shape, layers, dev)
    size = gib(sum(v.numel() * 2 for v in state.values()))
    print(f"  built random weights once in {time.perf_counter() - t0:.1f}s ({size:.1f} GiB bf16, in CPU memory)",
          flush=True)
    bnb_why = bnb_status(dev)
    for prec in a.precisions:
        if prec == "bf16" and dev.type == "cuda" and not native_bf16(dev):
            why = f"{card} has no native bf16 (emulated bf16 is not measured)"
            skipped.append({"what": "bf16 inference", "why": why})
            continue
        if prec in ("8bit", "4bit") and bnb_why:
            skipped.append({"what": f"bnb {prec} inference", "why": bnb_why})
            continue
        reset_memory(dev)
        try:
            # quantised inference computes in fp16, as on a T4
            model = load_precision(kw, state, prec, dev, torch.float16)
            records += measure_inference(model, prec, a.seqs, shape["vocab_size"], dev, a.batch_tokens, a.steps,
                                         layers, full)
        except Exception as exc:  # noqa: BLE001 - OOM, a kernel missing on this card or CPU: named, not fatal
            skipped.append({"what": f"{prec} inference", "why": _why(exc)})
            print(f"  {prec} inference skipped: {skipped[-1]['why']}", flush=True)
        model = None
        save()
    if bnb_why:
        skipped.append({"what": "QLoRA step", "why": bnb_why})
    else:
        reset_memory(dev)
        try:
            model = load_precision(kw, state, "4bit", dev, compute)
            records.append(measure_qlora_step(model, a.train_seq, a.train_batch, shape["vocab_size"], dev, a.steps,
                                              a.lora_r, layers, full, compute, skipped))
        except Exception as exc:  # noqa: BLE001
            skipped.append({"what": "QLoRA step", "why": _why(exc)})
            print(f"  QLoRA step skipped: {skipped[-1]['why']}", flush=True)
        model = None
    del state
    reset_memory(dev)
    save()
    if a.rehearsal or dev.type == "cpu":  # on CPU: named as skipped
        left = a.budget_s - (time.perf_counter() - started) if a.budget_s else float("inf")
        steps += rehearsal(dev, int(max(10, min(a.rehearsal_timeout, (left - 10) / 2))))
        save()
    for s in skipped:
        print(f"  skipped: {s['what']}: {s['why']}")
    print(f"wrote {out} ({len(records)} records, {len(skipped)} skipped) in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
