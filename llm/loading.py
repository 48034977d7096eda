"""Load any HF backbone (decoder or encoder) as a 3-class preference classifier.

``load_tokenizer`` resolves the tokenizer (folder / hub id / ``pkg://`` / GGUF / ``bpe:<vocab>``
trained on the training texts). ``load_classifier`` builds ``AutoModelForSequenceClassification``
with ``num_labels=3`` and applies, in order: dtype and quantization rules, Gemma2 attention and
softcapping rules, pad token, head re-initialisation, k-bit preparation and LoRA (training), or
an adapter (inference). The returned ``info`` dict records every choice needed to reload the
model identically (see :func:`load_classifier`).

Padding side: **right** everywhere (train and predict). HF sequence-classification heads pool the
last non-pad token, which is correct for either side; with right padding real tokens keep
positions ``0..n-1`` and never attend to padding, and ``llm.batching.collate`` also passes
explicit position ids so a left-padded tokenizer gives the same logits (tested).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from arena_kd.common.config_model import ModelConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import atomic_path, atomic_write_json, resolve_path

log = logging.getLogger(__name__)

NUM_LABELS = 3
PADDING_SIDE = "right"
HEAD_NAMES = ("score", "classifier")  # decoder heads are `score`, encoder heads `classifier`
BPE_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
INFO_FILE = "llm_info.json"

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


# --------------------------------------------------------------------------- tokenizer


def _texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def _parse_bpe(spec: str) -> int:
    try:
        vocab = int(spec.split(":", 1)[1])
    except (IndexError, ValueError):
        raise UserError(f"model.tokenizer: '{spec}' must be 'bpe:<vocab size>' (e.g. bpe:400)") from None
    if not 64 <= vocab <= 1_000_000:
        raise UserError(f"model.tokenizer: '{spec}': vocab size must be in [64, 1000000]")
    return vocab


def train_bpe_tokenizer(texts: list[str], vocab_size: int, out_dir: str | Path):
    """Train a deterministic byte-level BPE (Llama-like: BOS-adding post-processor, pad/bos/eos/unk) and save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(BPE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side=PADDING_SIDE,
    )
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    fast.save_pretrained(str(tmp))
    _publish_dir(tmp, out_dir)
    return fast


def _publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished folder into place; if another process got there first keep theirs (contents are deterministic)."""
    import shutil

    try:
        if final.exists():
            raise FileExistsError(final)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_source(model_cfg: ModelConfig) -> tuple[str, str | None]:
    """(path or hub id, gguf_file) the tokenizer comes from."""
    src = model_cfg.tokenizer or model_cfg.backbone
    gguf = model_cfg.gguf_file if model_cfg.tokenizer is None else None
    return resolve_path(src), gguf


def load_tokenizer(model_cfg: ModelConfig, workdir: str | Path, train_texts: list[str] | None = None):
    """The tokenizer of ``model_cfg``, right-padded, with a pad token.

    ``tokenizer: "bpe:<vocab>"`` trains a byte-level BPE on ``train_texts`` (deterministic) and caches it
    under ``<workdir>/tokenizers/bpe-<vocab>-<hash of texts>/``. Without ``train_texts`` the newest cached
    BPE of that vocab size is reused (inference after training).
    """
    from transformers import AutoTokenizer

    spec = model_cfg.tokenizer
    if spec is not None and spec.startswith("bpe:"):
        vocab = _parse_bpe(spec)
        root = Path(workdir) / "tokenizers"
        if train_texts is not None:
            texts = [t for t in train_texts if isinstance(t, str)]
            if not texts:
                raise UserError(f"model.tokenizer={spec}: no training texts to learn the BPE from")
            d = root / f"bpe-{vocab}-{_texts_hash(texts)}"
            if not (d / "tokenizer.json").is_file():
                d.parent.mkdir(parents=True, exist_ok=True)
                train_bpe_tokenizer(texts, vocab, d)
        else:
            found = sorted(root.glob(f"bpe-{vocab}-*/tokenizer.json"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise UserError(f"model.tokenizer={spec}: no trained BPE under {root} and no training texts given")
            d = found[-1].parent
        tok = AutoTokenizer.from_pretrained(str(d))
    else:
        src, gguf = _tokenizer_source(model_cfg)
        kw: dict[str, Any] = {}
        if gguf:
            kw["gguf_file"] = gguf
        if model_cfg.revision and not Path(src).exists():
            kw["revision"] = model_cfg.revision
        try:
            tok = AutoTokenizer.from_pretrained(src, **kw)
        except (OSError, ValueError) as exc:
            raise UserError(f"model.tokenizer: cannot load tokenizer from '{src}': {str(exc).splitlines()[0]}") from None
    ensure_pad_token(tok)
    tok.padding_side = PADDING_SIDE
    return tok


def ensure_pad_token(tokenizer) -> None:
    """Set a pad token when missing: unk, else eos (pooling reads the last non-pad token, consistently in train and predict)."""
    if tokenizer.pad_token_id is not None:
        return
    for name in ("unk_token", "eos_token", "bos_token"):
        tok = getattr(tokenizer, name, None)
        if tok is not None:
            tokenizer.pad_token = tok
            log.info("tokenizer has no pad token: using %s %r", name, tok)
            return
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    log.warning("tokenizer had no pad/unk/eos token: added '<pad>' (embeddings resized)")


# --------------------------------------------------------------------------- device / dtype


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local = os.environ.get("LOCAL_RANK")  # one GPU per process under accelerate/torchrun
        return torch.device("cuda", int(local) if local is not None and local.isdigit() else torch.cuda.current_device())
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device}: CUDA is not available on this machine")
    return dev


def native_bf16(device: str | torch.device = "cuda") -> bool:
    """True when the GPU computes bf16 natively (compute capability >= 8: A100, L4, H100...); False without CUDA.

    A T4 (7.5) only emulates bf16, several times slower than fp16, and ``torch.cuda.is_bf16_supported()`` says yes to
    emulation by default: every "bf16 or fp16?" choice in the project (loaders, export, GPU benchmark) asks this instead.
    """
    try:
        major, _ = torch.cuda.get_device_capability(torch.device(device))
    except Exception:  # noqa: BLE001 - no CUDA
        return False
    return major >= 8


def resolve_dtype(requested: str, device: torch.device, training: bool) -> torch.dtype:
    """dtype rules: auto = bf16 on bf16 GPUs, fp16 on other GPUs (T4), fp32 on CPU; impossible combinations refused."""
    if device.type == "cuda":
        bf16_ok = native_bf16(device)
        if requested == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
        if requested == "bf16" and not bf16_ok:
            name = torch.cuda.get_device_name(device)
            raise UserError(f"model.dtype=bf16: GPU '{name}' has no bf16 support; use dtype: fp16 (or auto)")
        return _DTYPES[requested]
    if requested == "auto":
        return torch.float32
    if requested == "fp16" and training:
        raise UserError("model.dtype=fp16: fp16 training needs a GPU (no CPU grad scaler); use dtype: fp32 or bf16 on CPU")
    return _DTYPES[requested]


# --------------------------------------------------------------------------- backbone config


def _model_type(model_cfg: ModelConfig, base_config) -> str:
    return str(getattr(base_config, "model_type", "") or "")


def resolve_attention(model_type: str, requested: str, disable_softcapping: bool, device: torch.device) -> str | None:
    """Attention implementation passed to HF (None = HF's default, sdpa where supported).

    Gemma2: transformers 5 declares ``_supports_sdpa = False`` for Gemma2 (sdpa has no logit
    softcapping), so sdpa is refused even with softcapping disabled; eager is the default; flash
    attention 2 (which implements softcapping) only on CUDA.
    """
    if model_type in ("gemma2", "gemma3", "gemma3_text"):
        if requested == "auto":
            return "eager"
        if requested == "sdpa":
            hint = " (disable_softcapping does not change this: transformers has no sdpa path for Gemma2)" if disable_softcapping else ""
            raise UserError(f"model.attn_implementation=sdpa: {model_type} needs eager (or flash_attention_2 on GPU) because of attention softcapping{hint}")
    if requested == "flash_attention_2" and device.type != "cuda":
        raise UserError("model.attn_implementation=flash_attention_2 needs a CUDA GPU; use eager or auto")
    return None if requested == "auto" else requested


def random_backbone_dir(model_cfg: ModelConfig, vocab_size: int, pad_token_id: int | None, workdir: str | Path) -> Path:
    """Build (once) and save a seeded random backbone from ``random_init``; returns its folder.

    Saving it makes random backbones behave like any pretrained folder: quantization works through
    ``from_pretrained`` and a frozen base is identical when an adapter is loaded later.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    ri = dict(model_cfg.random_init or {})
    if "model_type" not in ri:
        raise UserError("model.random_init: needs 'model_type' (e.g. gemma2, llama, bert) when backbone is 'random'")
    seed = int(ri.pop("seed", 0))
    model_type = ri.pop("model_type")
    key = json.dumps({"model_type": model_type, "seed": seed, "vocab": vocab_size, "pad": pad_token_id, **ri}, sort_keys=True)
    d = Path(workdir) / "random_backbones" / f"{model_type}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (d / "config.json").is_file():
        return d
    try:
        config = AutoConfig.for_model(model_type, vocab_size=vocab_size, pad_token_id=pad_token_id, num_labels=NUM_LABELS, **ri)
    except (ValueError, TypeError) as exc:
        raise UserError(f"model.random_init: {str(exc).splitlines()[0]}") from None
    if model_type.startswith("gemma"):
        config._attn_implementation = "eager"
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    _publish_dir(tmp, d)
    return d


# --------------------------------------------------------------------------- quantization


def quantization_config(kind: str, compute_dtype: torch.dtype, storage_dtype: torch.dtype | None = None):
    """BitsAndBytesConfig for '8bit' / '4bit' (NF4, double quant, compute + storage dtype); None for 'none'.

    The classification head is never quantized (it is trained / saved in full precision). ``storage_dtype``
    (default: the compute dtype) is the dtype the packed 4-bit bytes are stored as; under FSDP it must equal the
    dtype of the other sharded parameters (``llm.placement.sharded_storage_dtype``).
    """
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(HEAD_NAMES))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=storage_dtype or compute_dtype,
        llm_int8_skip_modules=list(HEAD_NAMES),
    )


def keep_bnb_4bit_layout_on_cpu(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel; returns the layers touched.

    bitsandbytes (0.50.2 measured) repacks a ``Linear4bit`` the first time it runs in eval mode without grad on a
    CPU with AVX512-BF16. The repack (a) crashes on layers narrower than the quantization block
    ("shape '[32, 0]' is invalid", seen on the tiny test models) and (b) stores the block scales in bf16, so the
    same weights predict differently after training than during it. CPU runs are for tests and rehearsals, where
    agreement with the trained model matters more than the kernel's speed; CUDA is untouched.
    """
    touched = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


# --------------------------------------------------------------------------- model


def classification_head(model) -> torch.nn.Module | None:
    """The final classification Linear (``score`` or ``classifier[.out_proj]``) of an HF model (peft-wrapped or not)."""
    base = model
    for name in HEAD_NAMES:
        mod = getattr(base, name, None)
        if mod is None:
            continue
        if isinstance(mod, torch.nn.Linear):
            return mod
        if isinstance(getattr(mod, "out_proj", None), torch.nn.Linear):  # RoBERTa/DeBERTa-style heads
            return mod.out_proj
        linears = [m for m in mod.modules() if isinstance(m, torch.nn.Linear)]
        if linears:
            return linears[-1]
    return None


def reinit_head(model, std: float, seed: int | None = None) -> None:
    """Re-initialise the classification head: weight ~ N(0, std), bias 0."""
    head = classification_head(model)
    if head is None:
        raise UserError(f"{type(model).__name__}: no classification head ('score' or 'classifier') to initialise")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0 if seed is None else int(seed))
    with torch.no_grad():
        w = torch.randn(head.weight.shape, generator=gen, dtype=torch.float32) * std
        head.weight.copy_(w.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.zero_()


def dequantized_gguf(source: str, gguf_file: str, workdir: str | Path) -> Path:
    """Plain safetensors copy of a GGUF checkpoint under ``<workdir>/gguf/<name>-<hash>/`` (built once, atomically)."""
    from transformers import AutoModelForCausalLM

    gguf_path = Path(source) / gguf_file
    key = hashlib.sha256(f"{gguf_path.resolve()}:{gguf_path.stat().st_size if gguf_path.exists() else 0}".encode()).hexdigest()[:12]
    final = Path(workdir) / "gguf" / f"{Path(gguf_file).stem}-{key}"
    if (final / "config.json").is_file():
        return final
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.gguf_file: cannot load '{gguf_path}': {str(exc).splitlines()[0]}") from None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.hf_quantizer = None
    lm.is_quantized = False
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    _publish_dir(tmp, final)
    return final


def _prune_layers(config, num_layers: int | None) -> None:
    """Keep the first ``num_layers`` transformer layers (layer pruning): the rest are never loaded."""
    if num_layers is None:
        return
    total = getattr(config, "num_hidden_layers", None)
    if total is None:
        raise UserError(f"model.num_layers={num_layers}: the backbone config has no num_hidden_layers")
    if num_layers > total:
        raise UserError(f"model.num_layers={num_layers}: the backbone has only {total} layers")
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (Gemma2, Llama in transformers 5)
        config.layer_types = config.layer_types[:num_layers]


def _backbone_source(model_cfg: ModelConfig, tokenizer, workdir) -> str:
    if model_cfg.backbone == "random":
        return str(random_backbone_dir(model_cfg, len(tokenizer), tokenizer.pad_token_id, workdir))
    src = resolve_path(model_cfg.backbone)
    return src


def _adapter_kind(adapter: str | Path) -> str:
    p = Path(adapter)
    if (p / "adapter_config.json").is_file():
        return "lora"
    if (p / "config.json").is_file():
        return "full"
    raise UserError(f"{p}: not an adapter folder (no adapter_config.json) nor a model folder (no config.json)")


def load_classifier(
    model_cfg: ModelConfig,
    *,
    training: bool,
    workdir: str | Path,
    adapter: str | Path | None = None,
    device: str | torch.device | None = None,
    tokenizer=None,
    train_texts: list[str] | None = None,
    seed: int | None = None,
):
    """(model, tokenizer, info) for ``model_cfg``.

    training=True: k-bit preparation (quantized bases), fresh head (``head_init_std``, seeded by
    ``seed``), LoRA adapters (or full fine-tuning when ``lora.enabled`` is false).
    training=False: eval mode; ``adapter`` (a LoRA adapter folder, or a full model folder saved by
    full fine-tuning) is loaded onto the (possibly quantized) base.

    ``info`` keys: backbone, source, revision, gguf_file, tokenizer, model_type, dtype, quantization,
    attn_implementation, disable_softcapping, attn_logit_softcapping(_original), padding_side,
    pad_token_id, pooling, device, lora, adapter, trainable_params, total_params, trainable_fraction,
    head_init_std.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    dev = resolve_device(device)
    dtype = resolve_dtype(model_cfg.dtype, dev, training)
    if model_cfg.quantization != "none" and dtype == torch.float16 and dev.type == "cpu":
        raise UserError(f"model.quantization={model_cfg.quantization} with dtype=fp16 is not supported on CPU; use fp32 or bf16")
    adapter_kind = _adapter_kind(adapter) if adapter is not None else None
    from arena_kd.llm.placement import main_process_first

    with main_process_first():  # caches (bpe tokenizer, random backbone, GGUF copy) are built once, by the main process
        if tokenizer is None:
            if adapter is not None and (Path(adapter) / "tokenizer.json").is_file() and (model_cfg.tokenizer or "").startswith("bpe:"):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(adapter))
                ensure_pad_token(tokenizer)
                tokenizer.padding_side = PADDING_SIDE
            else:
                tokenizer = load_tokenizer(model_cfg, workdir, train_texts)
        tokenizer.padding_side = PADDING_SIDE

        source = str(adapter) if adapter_kind == "full" else _backbone_source(model_cfg, tokenizer, workdir)
        is_local = Path(source).exists()
        common: dict[str, Any] = {}
        if model_cfg.gguf_file and adapter_kind != "full":
            # dequantise once into a plain HF folder: later loads take seconds, and HF Trainer refuses GGUF-flagged models
            source = str(dequantized_gguf(source, model_cfg.gguf_file, workdir))
            is_local = True
    if model_cfg.revision and not is_local:
        common["revision"] = model_cfg.revision
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.backbone: cannot load '{source}': {str(exc).splitlines()[0]}") from None
    model_type = _model_type(model_cfg, config)
    attn = resolve_attention(model_type, model_cfg.attn_implementation, model_cfg.disable_softcapping, dev)
    config.num_labels = NUM_LABELS
    config.id2label = {0: "model_a", 1: "model_b", 2: "tie"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.pad_token_id = tokenizer.pad_token_id
    softcap_before = getattr(config, "attn_logit_softcapping", None)
    if model_cfg.disable_softcapping:
        if not hasattr(config, "attn_logit_softcapping"):
            raise UserError(f"model.disable_softcapping: {model_type} has no attention softcapping")
        config.attn_logit_softcapping = None
    if hasattr(config, "use_cache"):
        config.use_cache = False
    _prune_layers(config, model_cfg.num_layers)

    from arena_kd.llm.placement import placement_kwargs, sharded_storage_dtype, sharding_launch

    sharded = sharding_launch() if training else None  # FSDP: the Trainer shards what is loaded here (ZeRO-3 is refused earlier)
    load_dtype = sharded_storage_dtype(dtype) if sharded else dtype
    qconf = quantization_config(model_cfg.quantization, dtype, storage_dtype=load_dtype)
    kwargs: dict[str, Any] = dict(config=config, dtype=load_dtype, **common)
    if attn is not None:
        kwargs["attn_implementation"] = attn
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    kwargs.update(placement_kwargs(model_cfg.device_map, model_cfg.max_memory, dev, qconf is not None))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(f"model.backbone: cannot load '{source}' as a classifier ({model_cfg.quantization}, {_DTYPE_NAMES.get(dtype)}): {str(exc).splitlines()[0]}") from None
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    if "device_map" not in kwargs:
        model.to(dev)
    elif dev.type == "cpu" and qconf is not None:
        keep_bnb_4bit_layout_on_cpu(model)
    model.config.pad_token_id = tokenizer.pad_token_id

    from arena_kd.llm import lora as lora_mod

    if training:
        if adapter is None:
            reinit_head(model, model_cfg.head_init_std, seed)
        if qconf is not None and not sharded:  # sharded QLoRA: no fp32 upcast (FSDP needs one dtype), see llm.placement
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=model_cfg.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        if model_cfg.lora.enabled:
            if adapter_kind == "lora":
                model = lora_mod.load_adapter(model, adapter, trainable=True)
            else:
                model = lora_mod.apply_lora(model, model_cfg.lora, autocast_adapter_dtype=not sharded)
        if dtype == torch.float16 and not sharded:  # GradScaler needs fp32 master copies of the trained weights
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        model.train()
    else:
        if adapter_kind == "lora":
            model = lora_mod.load_adapter(model, adapter, trainable=False)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    trainable, total = lora_mod.count_parameters(model)
    info = {
        "backbone": model_cfg.backbone,
        "source": source,
        "revision": model_cfg.revision,
        "gguf_file": model_cfg.gguf_file,
        "tokenizer": model_cfg.tokenizer,
        "model_type": model_type,
        "dtype": _DTYPE_NAMES.get(dtype, str(dtype)),
        "quantization": model_cfg.quantization,
        "attn_implementation": getattr(model.config, "_attn_implementation", None) or attn,
        "disable_softcapping": bool(model_cfg.disable_softcapping),
        "attn_logit_softcapping": getattr(model.config, "attn_logit_softcapping", None),
        "attn_logit_softcapping_original": softcap_before,
        "padding_side": PADDING_SIDE,
        "pad_token_id": tokenizer.pad_token_id,
        "pooling": "last_non_pad" if getattr(model.config, "is_decoder", False) or model_type not in _ENCODER_TYPES else "first_token",
        "device": str(dev),
        "placement": describe_placement(model, dev, sharded),
        "lora": model_cfg.lora.model_dump(mode="json") if model_cfg.lora.enabled else None,
        "adapter": str(adapter) if adapter is not None else None,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / max(total, 1),
        "head_init_std": model_cfg.head_init_std,
    }
    if training:
        log.info("trainable parameters: %d / %d (%.4f%%)", trainable, total, 100 * trainable / max(total, 1))
        print(f"[llm] trainable parameters: {trainable:,} / {total:,} ({100 * trainable / max(total, 1):.3f}%)")
    return model, tokenizer, info


def describe_placement(model, dev: torch.device, sharded: str | None) -> str:
    """'single', 'fsdp' / 'zero3' (sharded by the launch), or 'auto: cuda:0=20, cuda:1=21' (modules per device)."""
    if sharded:
        return sharded
    hf_map = getattr(model, "hf_device_map", None)
    if isinstance(hf_map, dict) and len(set(map(str, hf_map.values()))) > 1:
        counts: dict[str, int] = {}
        for d in hf_map.values():
            counts[str(d)] = counts.get(str(d), 0) + 1
        return "auto: " + ", ".join(f"{d}={n}" for d, n in sorted(counts.items()))
    return "single"


_ENCODER_TYPES = {"bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "xlm-roberta", "modernbert", "mpnet"}


def write_info(out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``info`` as ``<out_dir>/llm_info.json`` (atomic)."""
    return atomic_write_json(Path(out_dir) / INFO_FILE, info)


def read_info(folder: str | Path) -> dict[str, Any] | None:
    p = Path(folder) / INFO_FILE
    return json.loads(p.read_text()) if p.is_file() else None


__all__ = [
    "load_tokenizer", "load_classifier", "native_bf16", "train_bpe_tokenizer", "ensure_pad_token", "resolve_dtype",
    "resolve_device", "resolve_attention", "quantization_config", "keep_bnb_4bit_layout_on_cpu", "reinit_head", "classification_head",
    "random_backbone_dir", "write_info", "read_info", "PADDING_SIDE", "NUM_LABELS", "atomic_path",
]
