"""Sentence embeddings for the cosine features: any HF encoder, mean pooling, L2-normalised, cached by text hash.

The cache is a folder of Parquet shards (``hash`` + one float32 column per dimension); each call of
:meth:`SentenceEmbedder.encode` embeds only the texts not yet cached and writes them as one new shard
atomically, so an interrupted run keeps what it finished and a rerun is free.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.io import atomic_write_parquet, resolve_path

log = logging.getLogger(__name__)
SHARD_TEXTS = 1024


def text_key(text: str) -> str:
    """Cache key of one text: sha1 hex (40 chars)."""
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()


class SentenceEmbedder:
    """``encode(texts) -> float32[n, dim]`` (unit rows). ``model`` is a local folder or ``pkg://`` path.

    ``cache_dir``: ``<workdir>/cache/embeddings`` (a sub-folder per model is used); None = no cache.
    """

    def __init__(self, model: str, *, batch_size: int = 64, max_length: int = 256,
                 cache_dir: str | Path | None = None, device: str | None = None):
        self.model_spec = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._model = None
        self._tokenizer = None
        tag = hashlib.sha1(f"{model}|{max_length}".encode()).hexdigest()[:12]
        self.cache_dir = Path(cache_dir) / tag if cache_dir is not None else None
        self._cache: dict[str, np.ndarray] = {}
        if self.cache_dir is not None and self.cache_dir.is_dir():
            for shard in sorted(self.cache_dir.glob("part-*.parquet")):
                df = pd.read_parquet(shard)
                vecs = df.drop(columns=["hash"]).to_numpy(np.float32)
                self._cache.update(zip(df["hash"], vecs))

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_path(self.model_spec)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        # safetensors only: a pickled pytorch_model.bin in a downloaded or shipped folder could run code on load
        self._model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model.to(self.device)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """float32[n, dim]: mean of the last hidden states over real tokens, L2-normalised; batches sorted by length."""
        import torch

        self._load()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        with torch.inference_mode():
            for i in range(0, len(order), self.batch_size):
                idx = order[i : i + self.batch_size]
                enc = self._tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self._model(**enc).last_hidden_state  # [B, L, D]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, D]
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                for j, v in zip(idx, pooled.cpu().numpy()):
                    out[j] = v
        return np.stack(out).astype(np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32[n, dim] unit vectors; empty texts get an all-zero row (their cosines become 0)."""
        keys = [text_key(t) for t in texts]
        missing = {}
        for k, t in zip(keys, texts):
            if t.strip() and k not in self._cache and k not in missing:
                missing[k] = t
        items = list(missing.items())
        for start in range(0, len(items), SHARD_TEXTS):  # one shard per block: an interrupted run keeps finished blocks
            block = dict(items[start : start + SHARD_TEXTS])
            log.info("embedding %d new texts with %s", len(block), self.model_spec)
            vecs = self._embed(list(block.values()))
            new = dict(zip(block.keys(), vecs))
            self._cache.update(new)
            if self.cache_dir is not None:
                shard = pd.DataFrame(vecs, columns=[f"e{i}" for i in range(vecs.shape[1])])
                shard.insert(0, "hash", list(new.keys()))
                name = hashlib.sha1("".join(sorted(new)).encode()).hexdigest()[:16]
                atomic_write_parquet(self.cache_dir / f"part-{name}.parquet", shard)
        dim = next(iter(self._cache.values())).shape[0] if self._cache else 1
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, (k, t) in enumerate(zip(keys, texts)):
            if t.strip():
                out[i] = self._cache[k]
        return out
