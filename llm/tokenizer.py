"""The classifier's tokenizer: from a folder, hub id, ``pkg://`` path or GGUF file, or a byte-level BPE trained on
the training texts (``tokenizer: "bpe:<vocab>"``) and cached under the workdir; always right-padded with a pad token.

Padding side: **right** everywhere (train and predict). HF sequence-classification heads pool the last non-pad
token, which is correct for either side; with right padding real tokens keep positions ``0..n-1`` and never attend
to padding, and ``llm.batching.collate`` also passes explicit position ids so a left-padded tokenizer gives the same
logits (tested).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from arena_kd.common.config_model import ModelConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import resolve_path
from arena_kd.llm.cache import publish_dir, temporary_sibling

log = logging.getLogger(__name__)

PADDING_SIDE = "right"
BPE_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def texts_hash(texts: list[str]) -> str:
    """Content hash of a list of texts (length-prefixed, so no two lists collide by concatenation)."""
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
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side=PADDING_SIDE,
    )
    out_dir = Path(out_dir)
    tmp = temporary_sibling(out_dir)
    fast.save_pretrained(str(tmp))
    publish_dir(tmp, out_dir)
    return fast


def _tokenizer_source(model_cfg: ModelConfig, workdir: str | Path) -> str:
    """Path or hub id the tokenizer comes from; a GGUF's tokenizer is converted once into a folder under the
    workdir (a chunked GGUF package's file is assembled first)."""
    from arena_kd.llm.gguf import gguf_folder, gguf_tokenizer_dir

    if model_cfg.tokenizer is None and model_cfg.gguf_file:
        folder = gguf_folder(model_cfg.backbone, model_cfg.gguf_file, workdir)
        return str(gguf_tokenizer_dir(folder, model_cfg.gguf_file, workdir))
    return resolve_path(model_cfg.tokenizer or model_cfg.backbone)


def _bpe_folder(spec: str, workdir: str | Path, train_texts: list[str] | None) -> Path:
    """The cached BPE folder of ``spec``: trained on ``train_texts`` (once), or the newest one without texts."""
    vocab = _parse_bpe(spec)
    root = Path(workdir) / "tokenizers"
    if train_texts is not None:
        texts = [t for t in train_texts if isinstance(t, str)]
        if not texts:
            raise UserError(f"model.tokenizer={spec}: no training texts to learn the BPE from")
        d = root / f"bpe-{vocab}-{texts_hash(texts)}"
        if not (d / "tokenizer.json").is_file():
            d.parent.mkdir(parents=True, exist_ok=True)
            train_bpe_tokenizer(texts, vocab, d)
        return d
    found = sorted(root.glob(f"bpe-{vocab}-*/tokenizer.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"model.tokenizer={spec}: no trained BPE under {root} and no training texts given")
    return found[-1].parent


def load_tokenizer(model_cfg: ModelConfig, workdir: str | Path, train_texts: list[str] | None = None):
    """The tokenizer of ``model_cfg``, right-padded, with a pad token.

    ``tokenizer: "bpe:<vocab>"`` trains a byte-level BPE on ``train_texts`` (deterministic) and caches it
    under ``<workdir>/tokenizers/bpe-<vocab>-<hash of texts>/``. Without ``train_texts`` the newest cached
    BPE of that vocab size is reused (inference after training).
    """
    from transformers import AutoTokenizer

    spec = model_cfg.tokenizer
    if spec is not None and spec.startswith("bpe:"):
        tok = AutoTokenizer.from_pretrained(str(_bpe_folder(spec, workdir, train_texts)))
    else:
        src = model_cfg.tokenizer or model_cfg.backbone
        try:
            src = _tokenizer_source(model_cfg, workdir)
            kw: dict[str, Any] = {}
            if model_cfg.revision and not Path(src).exists():
                kw["revision"] = model_cfg.revision
            tok = AutoTokenizer.from_pretrained(src, **kw)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise UserError(f"model.tokenizer: cannot load tokenizer from '{src}': {first}") from None
    ensure_pad_token(tok)
    tok.padding_side = PADDING_SIDE
    return tok


def load_saved_tokenizer(folder: str | Path):
    """The tokenizer saved in ``folder`` (next to a trained adapter), right-padded, with a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ensure_pad_token(tok)
    tok.padding_side = PADDING_SIDE
    return tok


def adapter_tokenizer(adapter: str | Path):
    """The tokenizer saved next to an adapter (train_classifier saves it there), or None when there is none."""
    if not (Path(adapter) / "tokenizer_config.json").is_file():
        return None
    return load_saved_tokenizer(adapter)


def ensure_pad_token(tokenizer) -> None:
    """Set a pad token when missing: unk, else eos (pooling reads the last non-pad token, consistently in train and
    predict)."""
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
