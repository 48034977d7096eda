"""This machine's GEMM rate and a model's FLOPs per token: the yardstick of the learning curve's tokens/s.

FLOPs per token (matmuls only; attention's length-quadratic terms and the embedding lookup left out, so the
achieved rates below are slight underestimates): a forward pass costs 2 FLOPs per body parameter (every weight
but the input embedding); training adds 2 per parameter the backward pass crosses (from the lowest layer with a
trained weight up: LoRA on the top K layers stops there) and 2 per dense trained weight (weight gradients; LoRA's
own weights are negligible). Full fine-tuning: 6N, LoRA on every layer: 4N, prediction: 2N.
"""

from __future__ import annotations

import re
import time

import torch

LAYER = re.compile(r"\.(?:layers?|h|block)\.(\d+)\.")


def flops_per_token(model, model_cfg) -> dict[str, float]:
    """{"predict", "train"} FLOPs per token of ``model`` (see the module doc)."""
    embed = model.get_input_embeddings().weight
    body = bwd = dense = 0
    per_layer: dict[int, int] = {}
    trained_layers: list[int] = []
    for name, p in model.named_parameters():
        if p is embed or "embed" in name:
            continue
        n = p.numel()
        body += n
        m = LAYER.search(name)
        if m:
            per_layer[int(m.group(1))] = per_layer.get(int(m.group(1)), 0) + n
            if p.requires_grad:
                trained_layers.append(int(m.group(1)))
        if p.requires_grad and "lora_" not in name:
            dense += n
    if trained_layers:
        lowest = min(trained_layers)
        bwd = sum(n for i, n in per_layer.items() if i >= lowest) + (body - sum(per_layer.values()))
    return {"predict": 2.0 * body, "train": 2.0 * body + 2.0 * bwd + 2.0 * dense, "body_params": float(body)}


def gemm_rate(dtype: torch.dtype, threads: int, size: int = 1024, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of a ``size``² matmul in ``dtype`` on ``threads`` threads (best of three timings): per wall second
    ("wall") and per CPU second of this process ("cpu", summed over its threads). On a shared machine the wall rate
    falls with the load; the CPU rate is what the kernels achieve while they run, the fair yardstick for a model's
    CPU-second rate."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # warm-up (kernel selection, page faults)
        wall = cpu = float("inf")
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                a @ b
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        flops = 2.0 * size ** 3 * repeats
        return {"wall": round(flops / wall / 1e9, 1), "cpu": round(flops / max(cpu, 1e-9) / 1e9, 1)}
    finally:
        torch.set_num_threads(before)


def gemm_rates(threads: list[int]) -> dict[tuple[str, int], dict[str, float]]:
    """{(dtype name, threads): {"wall", "cpu"} GFLOP/s} for fp32 and bf16 at each thread count."""
    return {(name, t): gemm_rate(dt, t) for t in threads for name, dt in (("fp32", torch.float32),
                                                                           ("bf16", torch.bfloat16))}
