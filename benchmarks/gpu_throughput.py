"""Benchmark for a lent GPU: Gemma2-9B / 27B-shaped classifiers with random weights (no download).

    .venv/bin/python benchmarks/gpu_throughput.py [--models 9b 27b] [--layers N] [--seqs 1024 2048]
        [--modes bf16 fp16 8bit 4bit] [--tokens-per-batch 8192] [--steps 3] [--out benchmarks/gpu_results.json]
    .venv/bin/python benchmarks/gpu_throughput.py --tiny --device cpu --modes bf16 4bit --seqs 64   # logic check on CPU

For every (model, mode, sequence length) it measures, through the llm/ engine itself
(``llm.loading.load_classifier`` with the mode's dtype / bitsandbytes quantization, LoRA r=16 on all
linear layers, gradient checkpointing):

- inference: rows/s and tokens/s of ``llm.predict.logits_for_ids`` on full-length rows batched under
  ``--tokens-per-batch``, and the peak GPU memory;
- training: one LoRA optimizer step (batch 1 row, forward + backward + AdamW, autocast in the mode's
  compute dtype, grad scaler for fp16): rows/s, tokens/s and peak GPU memory.

``--layers N`` builds only N decoder layers (memory / time); the JSON then also holds figures
extrapolated linearly in depth to the published layer count (time x L/N; memory: the part above a
0-layer baseline x L/N), marked ``extrapolated``. The random backbone is written once per shape to
``--cache`` (bf16 safetensors) so the quantized modes load it like a real checkpoint. Without CUDA
(and without ``--device cpu``) the script prints a message and exits 0. Figures are printed and
written as JSON; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# Published architecture numbers (google/gemma-2-9b, google/gemma-2-27b config.json).
GEMMA2 = {
    "9b": dict(num_hidden_layers=42, hidden_size=3584, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
               intermediate_size=14336, vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096),
    "27b": dict(num_hidden_layers=46, hidden_size=4608, num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                intermediate_size=36864, vocab_size=256000, query_pre_attn_scalar=144, sliding_window=4096),
}
TINY = dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
            intermediate_size=128, vocab_size=512, query_pre_attn_scalar=32, sliding_window=64)


class _Tok:
    """Stand-in tokenizer: vocab size + pad id (rows are random token ids)."""

    pad_token_id = 0
    padding_side = "right"

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab


def _mode_cfg(mode: str) -> tuple[str, str]:
    return {"bf16": ("bf16", "none"), "fp16": ("fp16", "none"), "8bit": ("auto", "8bit"), "4bit": ("auto", "4bit")}[mode]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gib(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")


def _alloc_gib(dev: torch.device) -> float:
    return torch.cuda.memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")


def build_backbone(shape: dict, layers: int, cache: Path, dev: torch.device) -> Path:
    """Random Gemma2 classifier of ``shape`` with ``layers`` layers, saved once as bf16 safetensors."""
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    name = f"gemma2-h{shape['hidden_size']}-l{layers}-v{shape['vocab_size']}"
    d = cache / name
    if (d / "config.json").is_file():
        return d
    cfg = Gemma2Config(**{**shape, "num_hidden_layers": layers}, num_labels=3, pad_token_id=0, attn_implementation="eager",
                       use_cache=False)
    build_dev = dev if dev.type == "cuda" else torch.device("cpu")
    need = _param_bytes(cfg)
    free = shutil.disk_usage(cache if cache.exists() else cache.parent).free
    if need * 1.1 > free:
        raise SystemExit(f"need {need / 2**30:.1f} GiB of disk under {cache} for the random backbone, {free / 2**30:.1f} GiB free: use --layers")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build straight in bf16: a 27B model never exists in fp32
    try:
        with torch.device(build_dev):
            model = Gemma2ForSequenceClassification(cfg)
    finally:
        torch.set_default_dtype(old)
    tmp = d.with_name(d.name + ".tmp")
    model.save_pretrained(str(tmp), max_shard_size="4GB")
    os.replace(tmp, d)
    del model
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    print(f"  built random backbone {name} ({need / 2**30:.1f} GiB bf16) in {time.perf_counter() - t0:.0f}s")
    return d


def _param_bytes(cfg) -> int:
    h, i, L, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * i + 4 * h
    return 2 * (v * h + L * per_layer + 3 * h)


def measure(backbone: Path, mode: str, seqs: list[int], vocab: int, dev: torch.device, steps: int, tokens_per_batch: int) -> list[dict]:
    from arena_kd.config import ModelConfig
    from llm.batching import collate
    from llm.loading import load_classifier
    from llm.predict import logits_for_ids

    dtype_name, quant = _mode_cfg(mode)
    cfg = ModelConfig(backbone=str(backbone), dtype=dtype_name, quantization=quant, gradient_checkpointing=True,
                      lora={"r": 16, "alpha": 32, "dropout": 0.0})
    tok = _Tok(vocab)
    gen = torch.Generator().manual_seed(0)
    out: list[dict] = []

    # ---- inference
    _reset_peak(dev)
    t0 = time.perf_counter()
    model, _, info = load_classifier(cfg, training=False, workdir=backbone.parent, device=dev, tokenizer=tok)
    load_s = time.perf_counter() - t0
    weights_gib = _alloc_gib(dev)
    for seq in seqs:
        rows = max(1, tokens_per_batch // seq)
        ids = torch.randint(4, vocab, (rows * (steps + 1), seq), generator=gen).tolist()
        try:
            logits_for_ids(model, ids[:rows], 0, tokens_per_batch=tokens_per_batch, max_batch_size=rows)  # warm-up
            _sync(dev)
            _reset_peak(dev)
            t0 = time.perf_counter()
            logits_for_ids(model, ids[rows:], 0, tokens_per_batch=tokens_per_batch, max_batch_size=rows)
            _sync(dev)
            dt = time.perf_counter() - t0
            n = rows * steps
            out.append({"phase": "inference", "mode": mode, "seq": seq, "rows_per_batch": rows, "rows_per_s": n / dt,
                        "tokens_per_s": n * seq / dt, "peak_gib": _peak_gib(dev), "weights_gib": weights_gib,
                        "load_s": load_s, "dtype": info["dtype"], "attn": info["attn_implementation"]})
        except torch.cuda.OutOfMemoryError as exc:
            out.append({"phase": "inference", "mode": mode, "seq": seq, "error": f"OOM: {str(exc).splitlines()[0]}"})
        _print(out[-1])
    del model
    gc.collect()

    # ---- training: one LoRA optimizer step per row
    _reset_peak(dev)
    model, _, info = load_classifier(cfg, training=True, workdir=backbone.parent, device=dev, tokenizer=tok, seed=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[info["dtype"]]
    scaler = torch.amp.GradScaler(dev.type, enabled=compute == torch.float16)
    for seq in seqs:
        ids = torch.randint(4, vocab, (steps + 1, seq), generator=gen).tolist()
        try:
            def step(row):
                b = {k: v.to(dev) for k, v in collate([row], 0, "right").items()}
                with torch.autocast(dev.type, dtype=compute, enabled=compute != torch.float32):
                    logits = model(**b).logits.float()
                loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1], device=dev))
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)

            step(ids[0])
            _sync(dev)
            _reset_peak(dev)
            t0 = time.perf_counter()
            for r in ids[1:]:
                step(r)
            _sync(dev)
            dt = time.perf_counter() - t0
            out.append({"phase": "train_step", "mode": mode, "seq": seq, "rows_per_s": steps / dt, "tokens_per_s": steps * seq / dt,
                        "peak_gib": _peak_gib(dev), "trainable_params": info["trainable_params"], "dtype": info["dtype"],
                        "gradient_checkpointing": True})
        except torch.cuda.OutOfMemoryError as exc:
            opt.zero_grad(set_to_none=True)
            out.append({"phase": "train_step", "mode": mode, "seq": seq, "error": f"OOM: {str(exc).splitlines()[0]}"})
        _print(out[-1])
    del model, opt, params
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _print(r: dict) -> None:
    if "error" in r:
        print(f"  {r['phase']:<10} {r['mode']:<5} seq {r['seq']:>5}: {r['error']}")
        return
    print(f"  {r['phase']:<10} {r['mode']:<5} seq {r['seq']:>5}: {r['rows_per_s']:8.2f} rows/s {r['tokens_per_s']:10,.0f} tok/s  peak {r['peak_gib']:.1f} GiB")


def extrapolate(rows: list[dict], used: int, full: int, base_gib: float) -> list[dict]:
    """Linear-in-depth estimates for the published layer count (time x full/used; memory above base x full/used)."""
    k = full / used
    out = []
    for r in rows:
        if "error" in r:
            continue
        e = dict(r, extrapolated=True, layers=full)
        e["rows_per_s"] = r["rows_per_s"] / k
        e["tokens_per_s"] = r["tokens_per_s"] / k
        if r.get("peak_gib") == r.get("peak_gib"):  # not NaN
            e["peak_gib"] = base_gib + (r["peak_gib"] - base_gib) * k
        out.append(e)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["9b", "27b"], choices=sorted(GEMMA2))
    ap.add_argument("--layers", type=int, default=None, help="build only N decoder layers and extrapolate to the published depth")
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--modes", nargs="+", default=["bf16", "fp16", "8bit", "4bit"], choices=["bf16", "fp16", "8bit", "4bit"])
    ap.add_argument("--tokens-per-batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shape instead of the published ones (checks the script on CPU)")
    ap.add_argument("--cache", default=None, help="folder for the random backbones (default: a temporary folder, removed)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_results.json"))
    a = ap.parse_args()

    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device visible; nothing measured (run it on a GPU machine).")
        return 0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    cache = Path(a.cache) if a.cache else Path(tempfile.mkdtemp(prefix="gpu_tp_"))
    cache.mkdir(parents=True, exist_ok=True)
    result = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tokens_per_batch": a.tokens_per_batch, "steps": a.steps, "models": {}}
    print(f"device: {name}")
    try:
        for m in a.models:
            shape = dict(TINY if a.tiny else GEMMA2[m])
            full = shape["num_hidden_layers"]
            used = min(a.layers or full, full)
            print(f"== gemma2-{m}{' (tiny)' if a.tiny else ''}: {used}/{full} layers")
            backbone = build_backbone(shape, used, cache, dev)
            rows: list[dict] = []
            for mode in a.modes:
                if mode == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
                    rows.append({"mode": mode, "skipped": "no bf16 on this GPU"})
                    continue
                if mode == "fp16" and dev.type == "cpu":
                    rows.append({"mode": mode, "skipped": "fp16 training needs a GPU"})
                    continue
                rows.extend(measure(backbone, mode, a.seqs, shape["vocab_size"], dev, a.steps, a.tokens_per_batch))
            entry = {"shape": shape, "layers_built": used, "results": rows}
            if used < full:
                base = 2 * shape["vocab_size"] * shape["hidden_size"] / 2**30  # embedding (bf16) ~ the 0-layer baseline
                entry["extrapolated"] = extrapolate([r for r in rows if "phase" in r], used, full, base)
            result["models"][m] = entry
            shutil.rmtree(backbone, ignore_errors=True)
    finally:
        if not a.cache:
            shutil.rmtree(cache, ignore_errors=True)
    out = Path(a.out)
    from arena_kd.io import atomic_write_json

    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
