"""Hashed TF-IDF over words and character n-grams, vectorised with numpy on a byte buffer.

Why hashed and home-vectorised: scikit-learn's char-n-gram analyzer builds every n-gram as a Python string
(~10^8 of them for 57k Kaggle pairs), which alone takes minutes. Here n-grams are rolling hashes computed with
numpy over :class:`arena_kd.blend.text_bytes.ByteDocs`, bucketed into ``n_features`` columns (the hashing trick, as
sklearn's ``HashingVectorizer``), counted into a scipy CSR matrix and weighted like sklearn's
``TfidfVectorizer(sublinear_tf=True, smooth_idf=True, norm="l2")``. Text is ASCII-lower-cased; words are runs of
word bytes (``text_bytes``); char n-grams are byte n-grams inside one document.

The IDF is fitted once on training texts and saved (JSON + Parquet, no pickle) so that test-time features use
the training statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from arena_kd.blend.text_bytes import ByteDocs, run_starts
from arena_kd.common.io import atomic_write_json, atomic_write_parquet

_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A") : ord("Z") + 1] += 32
_BASE = np.uint64(1099511628211)  # FNV prime: polynomial base of the rolling hash
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads the polynomial hash over the high bits
_MAX_POW = 64
_POW = np.cumprod(np.r_[np.uint64(1), np.full(_MAX_POW - 1, _BASE, dtype=np.uint64)], dtype=np.uint64)


def hash_buckets(n_features: int) -> int:
    """The number of hash buckets actually used: ``n_features`` rounded up to a power of two (at least 2**8)."""
    return 1 << max(8, int(np.ceil(np.log2(max(n_features, 1)))))


def _bucket(h: np.ndarray, n_features: int) -> np.ndarray:
    """uint64 hashes -> int64 column index in [0, n_features) (n_features a power of two; multiply-shift hashing)."""
    bits = int(n_features).bit_length() - 1
    with np.errstate(over="ignore"):
        return ((h * _MIX) >> np.uint64(64 - bits)).astype(np.int64)


def _word_hashes(docs: ByteDocs, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(doc index int64[w], hash uint64[w]) of every word (run of word bytes) in the buffer."""
    word = docs.word_bytes()
    first = run_starts(word)
    start_pos = np.flatnonzero(first)
    if len(start_pos) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    seg = np.cumsum(first) - 1  # word index of each byte (valid where word)
    pos_in_word = np.arange(len(lower), dtype=np.int64) - start_pos[np.maximum(seg, 0)]
    with np.errstate(over="ignore"):
        contrib = lower.astype(np.uint64) * _POW[np.minimum(pos_in_word, _MAX_POW - 1)]
    contrib[~word] = 0
    h = np.add.reduceat(contrib, start_pos)
    doc = docs.doc_of_position()[start_pos]
    return doc, h


def _char_hashes(docs: ByteDocs, lower: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(doc index, hash) of every byte n-gram that lies inside one document."""
    total = len(lower)
    if total < n:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    m = total - n + 1
    h = lower[:m].astype(np.uint64)
    with np.errstate(over="ignore"):
        for k in range(1, n):
            h = h * _BASE + lower[k : k + m]
    doc = docs.doc_of_position()[:m]
    valid = np.arange(m, dtype=np.int64) + n <= docs.ends[doc]
    return doc[valid], h[valid]


def _count_matrix(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """CSR [n_rows, n_cols] of occurrence counts of (row, col) pairs, via one sort of packed keys (uint32 when it
    fits)."""
    key_dtype = np.uint32 if n_rows * n_cols < 2**32 else np.uint64
    keys = rows.astype(key_dtype) * key_dtype(n_cols) + cols.astype(key_dtype)
    keys.sort()
    if len(keys):
        change = np.empty(len(keys), dtype=bool)
        change[0] = True
        np.not_equal(keys[1:], keys[:-1], out=change[1:])
        first = np.flatnonzero(change)
        uniq = keys[first]
        counts = np.diff(np.append(first, len(keys))).astype(np.float64)
    else:
        uniq, counts = keys, np.zeros(0)
    r = (uniq // key_dtype(n_cols)).astype(np.int64)
    c = (uniq % key_dtype(n_cols)).astype(np.int32)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
    return sp.csr_matrix((counts, c, indptr), shape=(n_rows, n_cols))


@dataclass
class HashedTfidf:
    """One hashed TF-IDF space. ``analyzer='word'`` uses unigrams; ``'char'`` uses byte n-grams of sizes ``ngram``."""

    analyzer: Literal["word", "char"]
    n_features: int
    ngram: tuple[int, ...] = (1,)
    idf: np.ndarray | None = None
    n_docs_fit: int = 0
    _df: np.ndarray | None = field(default=None, repr=False)

    def counts(self, docs: ByteDocs) -> sp.csr_matrix:
        """Raw term counts, CSR float64 [n_docs, n_features], duplicates summed, indices sorted."""
        lower = _LOWER[docs.buf]
        if self.analyzer == "word":
            parts = [_word_hashes(docs, lower)]
        else:
            parts = [_char_hashes(docs, lower, n) for n in self.ngram]
        rows = np.concatenate([p[0] for p in parts])
        cols = np.concatenate([_bucket(p[1], self.n_features) for p in parts])
        return _count_matrix(rows, cols, docs.n_docs, self.n_features)

    def partial_fit(self, docs: ByteDocs) -> "HashedTfidf":
        """Accumulate document frequencies; call :meth:`finish_fit` after the last chunk."""
        x = self.counts(docs)
        df = np.bincount(x.indices, minlength=self.n_features).astype(np.int64)
        self._df = df if self._df is None else self._df + df
        self.n_docs_fit += docs.n_docs
        return self

    def finish_fit(self) -> "HashedTfidf":
        df = self._df if self._df is not None else np.zeros(self.n_features, np.int64)
        self.idf = np.log((1.0 + self.n_docs_fit) / (1.0 + df)) + 1.0
        self._df = None
        return self

    def transform(self, docs: ByteDocs, counts: sp.csr_matrix | None = None) -> sp.csr_matrix:
        """L2-normalised sublinear TF-IDF rows, CSR [n_docs, n_features] (all-zero rows for empty documents)."""
        if self.idf is None:
            raise RuntimeError("HashedTfidf used before fit")
        x = (self.counts(docs) if counts is None else counts).copy()
        x.data = (1.0 + np.log(x.data)) * self.idf[x.indices]
        cs = np.zeros(len(x.data) + 1)
        np.cumsum(x.data * x.data, out=cs[1:])
        norms = np.sqrt(cs[x.indptr[1:]] - cs[x.indptr[:-1]])
        norms[norms == 0] = 1.0
        x.data /= np.repeat(norms, np.diff(x.indptr))
        return x

    def params(self) -> dict:
        return {"analyzer": self.analyzer, "n_features": self.n_features, "ngram": list(self.ngram),
                "n_docs_fit": self.n_docs_fit}


def row_cosine(x: sp.csr_matrix, y: sp.csr_matrix) -> np.ndarray:
    """float64[n]: row-wise dot of two L2-normalised CSR matrices; NaN where either row is empty."""
    dot = np.asarray(x.multiply(y).sum(axis=1)).ravel()
    empty = (np.diff(x.indptr) == 0) | (np.diff(y.indptr) == 0)
    dot[empty] = np.nan
    return np.clip(dot, -1.0, 1.0)


def row_jaccard(x: sp.csr_matrix, y: sp.csr_matrix) -> np.ndarray:
    """float64[n]: |set(x) ∩ set(y)| / |set(x) ∪ set(y)| over the non-zero columns; NaN when both rows are empty."""
    nx, ny = np.diff(x.indptr), np.diff(y.indptr)
    inter = x.multiply(y).tocsr().getnnz(axis=1)
    union = nx + ny - inter
    out = np.full(len(nx), np.nan)
    ok = union > 0
    out[ok] = inter[ok] / union[ok]
    return out


@dataclass
class SimilarityModel:
    """The fitted word and char TF-IDF spaces used by :func:`arena_kd.blend.features.compute_features`."""

    word: HashedTfidf
    char: HashedTfidf

    max_bytes: int = 2000

    @classmethod
    def new(cls, n_features: int = 262144, char_ngram: tuple[int, ...] = (4,),
            max_bytes: int = 2000) -> "SimilarityModel":
        """``n_features`` is rounded up to a power of two; each text is cut to its first ``max_bytes`` UTF-8 bytes."""
        nf = hash_buckets(n_features)
        return cls(word=HashedTfidf("word", nf, (1,)), char=HashedTfidf("char", nf, tuple(char_ngram)),
                   max_bytes=max_bytes)

    def fit(self, chunks: Iterable[ByteDocs]) -> "SimilarityModel":
        """Fit both IDFs on chunks of documents (already cut with :func:`arena_kd.blend.text_bytes.truncated` to
        ``max_bytes``)."""
        for docs in chunks:
            self.word.partial_fit(docs)
            self.char.partial_fit(docs)
        self.word.finish_fit()
        self.char.finish_fit()
        return self

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        atomic_write_parquet(out / "tfidf_idf.parquet", pd.DataFrame({"word": self.word.idf, "char": self.char.idf}))
        atomic_write_json(out / "tfidf.json", {"word": self.word.params(), "char": self.char.params(),
                                               "max_bytes": self.max_bytes})

    @classmethod
    def load(cls, out_dir: str | Path) -> "SimilarityModel":
        out = Path(out_dir)
        params = json.loads((out / "tfidf.json").read_text())
        idf = pd.read_parquet(out / "tfidf_idf.parquet")
        spaces = {}
        for name in ("word", "char"):
            p = params[name]
            spaces[name] = HashedTfidf(p["analyzer"], int(p["n_features"]), tuple(p["ngram"]),
                                       idf[name].to_numpy(np.float64), int(p["n_docs_fit"]))
        return cls(**spaces, max_bytes=int(params["max_bytes"]))
