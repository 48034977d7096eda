"""The trained student as one plain model: LoRA folded into the weights the student was trained on.

Rule (any device): the base is loaded exactly as in training (same quantization and compute dtype); a 4-bit or
8-bit base is dequantised (``PreTrainedModel.dequantize``: the NF4/int8 weights times their scales, in the compute
dtype — the very weights the trained forward pass used); everything is cast to fp32; the adapter is merged in fp32
(W + scale * B @ A summed once, in full precision: an fp16 merge on CPU would round twice and CPU fp16 kernels are
partial); the caller casts the result once to ``student.export_dtype``. So the merged model is the trained model up
to that last rounding. Merging into the original 16-bit weights instead would add the quantisation error
(W_orig - W_nf4) to every layer. Memory: the merge holds the model in fp32 (4 bytes/parameter: ~37 GB for
Gemma2-9B), on the training device.
"""

from __future__ import annotations

from pathlib import Path

import torch

from arena_kd.common.config_model import ModelConfig


def dequantize_base(model):
    """A bitsandbytes-quantized HF model → the same model with plain Linear layers holding the dequantised weights."""
    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize() or model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_trained_base(model_cfg: ModelConfig, adapter: str | Path, workdir: str | Path, device: str | None = None):
    """(fp32 base with dequantised weights, tokenizer, info): the trained student's base, ready for its adapter."""
    from arena_kd.llm.loading import load_classifier
    from arena_kd.llm.tokenizer import adapter_tokenizer

    adapter = Path(adapter)
    tok = adapter_tokenizer(adapter)
    base, tok, info = load_classifier(model_cfg, training=False, workdir=workdir, device=device, tokenizer=tok)
    base = dequantize_base(base).float()
    return base, tok, info


def merged_student(model_cfg: ModelConfig, adapter: str | Path, workdir: str | Path, device: str | None = None):
    """(merged fp32 model, tokenizer, info) of a LoRA student (see the module rule); a full model folder loads as is."""
    from arena_kd.llm.loading import adapter_kind, load_classifier
    from arena_kd.llm.lora import load_adapter, merge_and_unload

    adapter = Path(adapter)
    if adapter_kind(adapter) == "full":
        model, tok, info = load_classifier(model_cfg.model_copy(update={"quantization": "none"}), training=False,
                                           workdir=workdir, adapter=adapter, device=device)
        return model.float(), tok, info
    base, tok, info = load_trained_base(model_cfg, adapter, workdir, device)
    model = merge_and_unload(load_adapter(base, adapter))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = {**info, "merged_from": str(adapter),
            "merge_rule": "dequantised trained base, fp32 merge, one cast to the export dtype"}
    return model, tok, info


def weight_delta(merged, base) -> dict[str, torch.Tensor]:
    """{parameter name: merged - base} for every parameter that differs (tests, drift analysis)."""
    bp = dict(base.named_parameters())
    out = {}
    for name, p in merged.named_parameters():
        if name in bp and bp[name].shape == p.shape:
            d = p.detach().double() - bp[name].detach().double()
            if d.abs().max() > 0:
                out[name] = d
    return out
