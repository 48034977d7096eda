"""The GPU benchmark's measurements: inference tokens/s and peak memory per sequence length, one QLoRA step.

Each returns a :class:`arena_kd.planner.calibration.Record` (figures scaled from the layers built to the full depth)
and prints one line for it.
"""

from __future__ import annotations

import time

import torch
from gpu_model import gib, memory_gib, sync

from arena_kd.planner.calibration import Record


def _embedding_gib(model) -> float:
    return gib(sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "layers." not in n))


def measure_inference(model, precision: str, seqs: list[int], vocab: int, dev: torch.device, batch_tokens: int,
                      steps: int, layers: int, full: int) -> list[Record]:
    """Tokens/s and peak memory at every length in ``seqs`` (full-length rows under ``batch_tokens``)."""
    out = []
    weights = memory_gib(dev, peak=False)
    emb = _embedding_gib(model)
    for seq in seqs:
        rows = max(1, batch_tokens // seq)
        ids = torch.randint(4, vocab, (rows, seq), device=dev)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)  # warm-up (kernels, autotune)
            sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                model(input_ids=ids, attention_mask=mask)
            sync(dev)
        dt = time.perf_counter() - t0
        tps = rows * seq * steps / dt
        peak = memory_gib(dev, peak=True)
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
    weights = memory_gib(dev, peak=False)

    def step() -> None:
        with torch.autocast(dev.type, dtype=compute):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    step()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    tps = batch * seq * steps / (time.perf_counter() - t0)
    peak = memory_gib(dev, peak=True)
    peak_full = None
    if peak is not None and weights is not None:  # checkpointed inputs, LoRA state and weights all grow with depth
        peak_full = peak * full / layers
    rec = Record("train_step", "gemma2-9b", "4bit", seq, batch, layers, full, tps, tps * layers / full, peak, peak_full,
                 gradient_checkpointing=True, lora_r=r)
    _print(rec)
    return rec


def _print(r: Record) -> None:
    mem = "peak n/a on CPU"
    if r.peak_gib is not None:
        mem = f"peak {r.peak_gib:.1f} GiB (x{r.layers_full}/{r.layers_built} layers: {r.peak_gib_full:.1f})"
    print(f"  {r.kind:<10} {r.precision:<5} seq {r.seq_len:>5} x {r.batch_rows:<3}: {r.tokens_per_s:10,.0f} tok/s "
          f"(full depth {r.tokens_per_s_full:,.0f})  {mem}", flush=True)
