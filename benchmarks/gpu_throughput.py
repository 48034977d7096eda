"""GPU throughput of a Gemma2-9B-shaped classifier with random weights (no download), for the planner's calibration.

    .venv/bin/python benchmarks/gpu_throughput.py [--layers N|auto] [--seqs 1024 2000] [--precisions bf16 fp16 8bit 4bit]
        [--batch-tokens 8192] [--steps 2] [--train-seq 1024] [--train-batch 2] [--lora-r 64] [--rehearsal] [--tiny]
        [--out planner/calibration_data/<card>-<date>.json]
    .venv/bin/python benchmarks/gpu_throughput.py --dry-run --out /tmp/r.json    # tiny shapes on CPU: the logic, not figures

Usually run through ``benchmarks/gpu_check.sh`` (one command for a short GPU window). What it does:

1. builds the random bf16 weights ONCE (on the GPU, then parked in CPU memory: 18.5 GB for all 42 layers; never
   written to disk) and, for every precision, loads them onto the GPU from that copy — 16-bit by a cast,
   bitsandbytes 8-bit / 4-bit (NF4) by swapping each decoder Linear for its bnb module (quantised on the way in);
2. inference: tokens/s and peak memory at every ``--seqs`` length (full-length rows under ``--batch-tokens``);
3. a QLoRA step: NF4 base, LoRA r=``--lora-r`` on all linear layers, gradient checkpointing, ``--train-seq`` tokens,
   paged 8-bit AdamW when bitsandbytes has CUDA (torch AdamW otherwise, recorded);
4. ``--rehearsal``: the smoke pipeline (teachers → distill → export → stack → submission) on CUDA with fp16 autocast
   and paged 8-bit AdamW, then the GPU-marked tests — what cannot run is skipped and named.

With ``--layers N`` < 42 the figures are also scaled to 42 layers (``*_full``: time x 42/N; memory: the
layer-proportional part x 42/N). Results go to one file in the schema of :mod:`arena_kd.planner.calibration`
(the planner reads it: ``arena-kd plan --calibration FILE``; copy it into ``planner/calibration_data/`` to ship it).
Without CUDA (and without ``--dry-run``) it says so and exits 0. Figures are printed and written; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message="MatMul8bitLt")  # bnb: fp16 cast notice, once per call
warnings.filterwarnings("ignore", category=FutureWarning)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from arena_kd.llm.devices import native_bf16  # noqa: E402
from arena_kd.planner.calibration import Record, Results, now_utc, write_results  # noqa: E402

# Published google/gemma-2-9b config.json (the planner's table: planner/specs.py ARCHS["gemma2-9b"]).
GEMMA2_9B = dict(num_hidden_layers=42, hidden_size=3584, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                 intermediate_size=14336, vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096)
# Tiny shape for --dry-run: every Linear has in_features >= 64 (bitsandbytes' CPU 4-bit path needs it on AVX512-BF16).
TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
            intermediate_size=128, vocab_size=512, query_pre_attn_scalar=32, sliding_window=64)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
REHEARSAL_MODULES = ("transformers", "peft", "accelerate", "bitsandbytes", "typer", "pydantic", "yaml", "pandas",
                     "pyarrow", "lightgbm", "scipy", "sklearn")
"""What the project's pipeline imports (pyproject dependencies): checked before the rehearsal so a gap is named."""


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _gib(n: float) -> float:
    return n / 2**30


def _mem(dev: torch.device, peak: bool) -> float | None:
    if dev.type != "cuda":
        return None
    return _gib(torch.cuda.max_memory_allocated(dev) if peak else torch.cuda.memory_allocated(dev))


def _reset(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def bnb_status(dev: torch.device) -> str | None:
    """None when bitsandbytes can run quantised layers on ``dev``; else why not."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken CUDA setup
        return f"bitsandbytes not importable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return None


def build_master(shape: dict, layers: int, dev: torch.device) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config kwargs, state dict in CPU memory) of a random bf16 Gemma2 classifier, built once on ``dev``."""
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    kw = {**shape, "num_hidden_layers": layers}
    cfg = Gemma2Config(**kw, num_labels=3, pad_token_id=0, attn_implementation="eager", use_cache=False)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # straight in bf16: the 9B never exists in fp32
    try:
        with torch.device(dev):
            model = Gemma2ForSequenceClassification(cfg)
    finally:
        torch.set_default_dtype(old)
    state = {k: v.detach().to("cpu") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    del model
    _reset(dev)
    return kw, state


def _skeleton(kw: dict):
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    cfg = Gemma2Config(**kw, num_labels=3, pad_token_id=0, attn_implementation="eager", use_cache=False)
    with torch.device("meta"):
        return Gemma2ForSequenceClassification(cfg)


def load_precision(kw: dict, state: dict, precision: str, dev: torch.device, compute: torch.dtype):
    """A model on ``dev`` in ``precision`` made from the CPU master weights (which stay untouched)."""
    model = _skeleton(kw)
    for name, t in state.items():  # parameters and buffers ARE the master tensors until moved
        owner, _, attr = name.rpartition(".")
        mod = model.get_submodule(owner)
        if attr in mod._parameters:
            mod._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
        else:
            mod._buffers[attr] = t
    if precision in DTYPES:
        return model.to(dev, DTYPES[precision]).eval()
    import bitsandbytes as bnb

    swapped = []
    for parent in list(model.model.layers.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            w = child.weight.data  # the bf16 master, on the CPU; bnb quantises it on its way to the GPU
            if precision == "8bit":
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                          has_fp16_weights=False, threshold=6.0, device="meta")  # meta: no init work
                new.weight = bnb.nn.Int8Params(w.to(torch.float16), requires_grad=False, has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                        compute_dtype=compute, quant_type="nf4", compress_statistics=True, device="meta")
                new.weight = bnb.nn.Params4bit(w.to(compute), requires_grad=False, quant_type="nf4", compress_statistics=True)
            if child.bias is not None:
                new.bias = torch.nn.Parameter(child.bias.data.to(compute), requires_grad=False)
            setattr(parent, name, new)
            swapped.append(new)
    quantized = {id(m.weight) for m in swapped}
    for p in model.parameters():  # embeddings, norms, head: 16-bit as bitsandbytes leaves them (copies; master untouched)
        if id(p) not in quantized and p.is_floating_point():
            p.data = p.data.to(compute)
    model.to(dev)  # bnb quantises while moving to CUDA
    model.is_loaded_in_8bit, model.is_loaded_in_4bit = precision == "8bit", precision == "4bit"  # peft picks its bnb LoRA layers
    return model.eval()


def _embedding_gib(model) -> float:
    return _gib(sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "layers." not in n))


def measure_inference(model, precision: str, seqs: list[int], vocab: int, dev: torch.device, batch_tokens: int,
                      steps: int, layers: int, full: int) -> list[Record]:
    out = []
    weights = _mem(dev, peak=False)
    emb = _embedding_gib(model)
    for seq in seqs:
        rows = max(1, batch_tokens // seq)
        ids = torch.randint(4, vocab, (rows, seq), device=dev)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)  # warm-up (kernels, autotune)
            _sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                model(input_ids=ids, attention_mask=mask)
            _sync(dev)
        dt = time.perf_counter() - t0
        tps = rows * seq * steps / dt
        peak = _mem(dev, peak=True)
        peak_full = None
        if peak is not None and weights is not None:  # one layer's activations live at a time: only weights scale
            peak_full = emb + (weights - emb) * full / layers + (peak - weights)
        out.append(Record("inference", "gemma2-9b", precision, seq, rows, layers, full, tps, tps * layers / full,
                          peak, peak_full))
        _print(out[-1])
    return out


def measure_qlora_step(model, seq: int, batch: int, vocab: int, dev: torch.device, steps: int, r: int, layers: int,
                       full: int, compute: torch.dtype, notes: list[dict]) -> Record:
    """One LoRA optimizer step on the 4-bit model (gradient checkpointing), timed over ``steps`` steps."""
    from peft import LoraConfig, get_peft_model

    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="SEQ_CLS"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = None
    if dev.type == "cuda":
        try:
            import bitsandbytes as bnb

            opt = bnb.optim.PagedAdamW8bit(params, lr=1e-5)
        except Exception as exc:  # noqa: BLE001
            notes.append({"what": "paged 8-bit AdamW in the QLoRA step", "why": f"{type(exc).__name__}: {exc}"[:200]})
    if opt is None:
        opt = torch.optim.AdamW(params, lr=1e-5)
    scaler = torch.amp.GradScaler(dev.type, enabled=compute == torch.float16 and dev.type == "cuda")
    ids = torch.randint(4, vocab, (batch, seq), device=dev)
    labels = torch.randint(0, 3, (batch,), device=dev)
    weights = _mem(dev, peak=False)

    def step() -> None:
        with torch.autocast(dev.type, dtype=compute):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    tps = batch * seq * steps / (time.perf_counter() - t0)
    peak = _mem(dev, peak=True)
    peak_full = None
    if peak is not None and weights is not None:  # checkpointed inputs, LoRA state and weights all grow with depth
        peak_full = peak * full / layers
    rec = Record("train_step", "gemma2-9b", "4bit", seq, batch, layers, full, tps, tps * layers / full, peak, peak_full,
                 gradient_checkpointing=True, lora_r=r)
    _print(rec)
    return rec


def _print(r: Record) -> None:
    mem = f"peak {r.peak_gib:.1f} GiB (x{r.layers_full}/{r.layers_built} layers: {r.peak_gib_full:.1f})" if r.peak_gib is not None else "peak n/a on CPU"
    print(f"  {r.kind:<10} {r.precision:<5} seq {r.seq_len:>5} x {r.batch_rows:<3}: {r.tokens_per_s:10,.0f} tok/s "
          f"(full depth {r.tokens_per_s_full:,.0f})  {mem}", flush=True)


def rehearsal(dev: torch.device, timeout_s: int) -> list[dict]:
    """The smoke pipeline on CUDA (fp16 autocast, paged 8-bit AdamW, fp16 export), then the GPU-marked tests."""
    if dev.type != "cuda":
        why = "dry run on CPU: the rehearsal needs CUDA (its CPU path is tests/test_pipeline.py)"
        return [{"name": n, "status": "skipped", "seconds": 0.0, "detail": why}
                for n in ("rehearsal: smoke pipeline on CUDA", "rehearsal: pytest -m gpu")]
    import importlib.util

    work = tempfile.mkdtemp(prefix="gpu_check_")
    sets = ["workdir=" + work, "student.model.dtype=fp16", "student.train.optim=paged_adamw_8bit", "student.export_dtype=fp16",
            "teachers.models.0.train.optim=paged_adamw_8bit", "teachers.models.0.model.dtype=fp16"]
    cmds = [("rehearsal: smoke pipeline on CUDA", REHEARSAL_MODULES,
             [sys.executable, "-m", "arena_kd.cli", "all", "--config", "configs/smoke.yaml", *sum((["--set", s] for s in sets), [])]),
            ("rehearsal: pytest -m gpu", (*REHEARSAL_MODULES, "pytest"),
             [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"])]
    steps = []
    for name, needs, cmd in cmds:
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            steps.append({"name": name, "status": "skipped", "seconds": 0.0,
                          "detail": f"not installed here: {', '.join(missing)} (bring wheels: gpu_check.sh --fetch-wheels)"})
            print(f"  {name}: skipped ({steps[-1]['detail']})", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
            tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
            status = "ok" if p.returncode == 0 else "failed"
            detail = f"exit {p.returncode}: " + " | ".join(tail)
        except subprocess.TimeoutExpired:
            status, detail = "failed", f"timed out after {timeout_s}s"
        steps.append({"name": name, "status": status, "seconds": round(time.perf_counter() - t0, 1), "detail": detail[:600]})
        print(f"  {name}: {status} ({steps[-1]['seconds']}s) {detail[:200]}", flush=True)
    return steps


def _software() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for mod in ("transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing real")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CUDA (the GPU test): checks the CUDA paths in seconds")
    ap.add_argument("--layers", default="auto", help="decoder layers to build (auto: 42 with >= 60 GiB of GPU memory, else 8)")
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 2000])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp16", "8bit", "4bit"], choices=["bf16", "fp16", "8bit", "4bit"])
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--train-seq", type=int, default=1024)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--rehearsal", action="store_true", help="also run the smoke pipeline and the GPU tests on CUDA")
    ap.add_argument("--rehearsal-timeout", type=int, default=180, help="seconds per rehearsal step (at most half what --budget-s leaves)")
    ap.add_argument("--budget-s", type=float, default=None, help="whole-run budget: the rehearsal steps shrink to fit it")
    ap.add_argument("--out", default=None, help="results file (default planner/calibration_data/<card>-<date>.json)")
    a = ap.parse_args(argv)
    started = time.perf_counter()

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device visible; nothing measured (run benchmarks/gpu_check.sh on a GPU machine).")
        return 0
    dev = torch.device("cpu" if a.dry_run else "cuda")
    a.dry_run = a.dry_run or a.tiny  # tiny figures never calibrate the planner
    shape = dict(TINY if a.dry_run else GEMMA2_9B)
    if a.dry_run:
        a.seqs = sorted({min(s // 32, 64) for s in a.seqs})  # 1024, 2000 -> 32, 62: two short lengths
        a.train_seq, a.batch_tokens, a.lora_r, a.steps = min(a.train_seq, 64), min(a.batch_tokens, 256), min(a.lora_r, 8), 1
    card = torch.cuda.get_device_name(dev) + (" (tiny)" if a.tiny else "") if dev.type == "cuda" else "cpu (dry run)"
    card_gib = _gib(torch.cuda.get_device_properties(dev).total_memory) if dev.type == "cuda" else None
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
    out = Path(a.out) if a.out else ROOT / "submission" / "calibration_data" / f"{slug}-{date[:10]}.json"
    print(f"results file: {out}", flush=True)

    def save() -> None:  # after every measurement: a window that ends early still leaves a readable file
        write_results(out, Results(card=card, date=date, records=records, card_memory_gib=card_gib, dry_run=a.dry_run,
                                   gpu_count=torch.cuda.device_count() if dev.type == "cuda" else 0,
                                   software=_software(), skipped=skipped, steps=steps))

    t0 = time.perf_counter()
    kw, state = build_master(shape, layers, dev)
    print(f"  built random weights once in {time.perf_counter() - t0:.1f}s ({_gib(sum(v.numel() * 2 for v in state.values())):.1f} GiB bf16, in CPU memory)", flush=True)
    bnb_why = bnb_status(dev)
    for prec in a.precisions:
        if prec == "bf16" and dev.type == "cuda" and not native_bf16(dev):
            skipped.append({"what": "bf16 inference", "why": f"{card} has no native bf16 (emulated bf16 is not measured)"})
            continue
        if prec in ("8bit", "4bit") and bnb_why:
            skipped.append({"what": f"bnb {prec} inference", "why": bnb_why})
            continue
        _reset(dev)
        try:
            model = load_precision(kw, state, prec, dev, torch.float16)  # quantised inference computes in fp16, as on T4
            records += measure_inference(model, prec, a.seqs, shape["vocab_size"], dev, a.batch_tokens, a.steps, layers, full)
        except Exception as exc:  # noqa: BLE001 - OOM, a kernel missing on this card or CPU: named, not fatal
            skipped.append({"what": f"{prec} inference", "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            print(f"  {prec} inference skipped: {skipped[-1]['why']}", flush=True)
        model = None
        save()
    if bnb_why:
        skipped.append({"what": "QLoRA step", "why": bnb_why})
    else:
        _reset(dev)
        try:
            model = load_precision(kw, state, "4bit", dev, compute)
            records.append(measure_qlora_step(model, a.train_seq, a.train_batch, shape["vocab_size"], dev, a.steps, a.lora_r,
                                              layers, full, compute, skipped))
        except Exception as exc:  # noqa: BLE001
            skipped.append({"what": "QLoRA step", "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            print(f"  QLoRA step skipped: {skipped[-1]['why']}", flush=True)
        model = None
    del state
    _reset(dev)
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
