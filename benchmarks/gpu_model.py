"""The GPU benchmark's model: a random Gemma2-shaped classifier built once in bf16, loaded per precision.

The bf16 weights are built ONCE (on the GPU, then parked in CPU memory: 18.5 GB for all 42 layers; never written to
disk); every precision is loaded onto the device from that copy — 16-bit by a cast, bitsandbytes 8-bit / 4-bit (NF4)
by swapping each decoder Linear for its bnb module (quantised on the way in). Also the device-memory helpers the
measurements use.
"""

from __future__ import annotations

import gc

import torch

# Published google/gemma-2-9b config.json (the planner's table: planner/specs.py ARCHS["gemma2-9b"]).
GEMMA2_9B = dict(num_hidden_layers=42, hidden_size=3584, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                 intermediate_size=14336, vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096)
# Tiny shape for --dry-run: every Linear has in_features >= 64 (bitsandbytes' CPU 4-bit path needs it on AVX512-BF16).
TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
            intermediate_size=128, vocab_size=512, query_pre_attn_scalar=32, sliding_window=64)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gib(n: float) -> float:
    return n / 2**30


def memory_gib(dev: torch.device, peak: bool) -> float | None:
    if dev.type != "cuda":
        return None
    return gib(torch.cuda.max_memory_allocated(dev) if peak else torch.cuda.memory_allocated(dev))


def reset_memory(dev: torch.device) -> None:
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


def _config(kw: dict):
    from transformers import Gemma2Config

    return Gemma2Config(**kw, num_labels=3, pad_token_id=0, attn_implementation="eager", use_cache=False)


def build_master(shape: dict, layers: int, dev: torch.device) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config kwargs, state dict in CPU memory) of a random bf16 Gemma2 classifier, built once on ``dev``."""
    from transformers import Gemma2ForSequenceClassification

    kw = {**shape, "num_hidden_layers": layers}
    cfg = _config(kw)
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
    reset_memory(dev)
    return kw, state


def _skeleton(kw: dict):
    from transformers import Gemma2ForSequenceClassification

    with torch.device("meta"):
        return Gemma2ForSequenceClassification(_config(kw))


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
                                        compute_dtype=compute, quant_type="nf4", compress_statistics=True,
                                        device="meta")
                new.weight = bnb.nn.Params4bit(w.to(compute), requires_grad=False, quant_type="nf4",
                                               compress_statistics=True)
            if child.bias is not None:
                new.bias = torch.nn.Parameter(child.bias.data.to(compute), requires_grad=False)
            setattr(parent, name, new)
            swapped.append(new)
    quantized = {id(m.weight) for m in swapped}
    # embeddings, norms, head: 16-bit as bitsandbytes leaves them (copies; the master stays untouched)
    for p in model.parameters():
        if id(p) not in quantized and p.is_floating_point():
            p.data = p.data.to(compute)
    model.to(dev)  # bnb quantises while moving to CUDA
    # peft picks its bnb LoRA layers by these flags
    model.is_loaded_in_8bit, model.is_loaded_in_4bit = precision == "8bit", precision == "4bit"
    return model.eval()
