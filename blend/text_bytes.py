"""Texts as one UTF-8 byte buffer, so per-document counts and n-gram hashes are numpy operations.

Documents are joined with a ``\\n`` separator (so a word never spans two documents); document ``i``
occupies ``buf[starts[i]:ends[i]]``. Byte classes: *word* bytes are ASCII letters, digits, ``_`` and every
non-ASCII byte (so accented words and CJK runs count as words); *blank* bytes are ASCII whitespace; the rest
is punctuation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 11, 12, 13, 32]] = True
_WORD = np.zeros(256, dtype=bool)
_WORD[ord("0") : ord("9") + 1] = True
_WORD[ord("a") : ord("z") + 1] = True
_WORD[ord("A") : ord("Z") + 1] = True
_WORD[ord("_")] = True
_WORD[128:] = True
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[ord("0") : ord("9") + 1] = True


@dataclass
class ByteDocs:
    """``buf``: uint8[total]; ``starts``/``ends``: int64[n] byte ranges of the n documents."""

    buf: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    encoded: list[bytes] | None = field(default=None, repr=False)

    @classmethod
    def from_texts(cls, texts: list[str]) -> "ByteDocs":
        return cls.from_encoded([t.encode("utf-8", "replace") for t in texts])

    @classmethod
    def from_encoded(cls, encoded: list[bytes]) -> "ByteDocs":
        lens = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        starts = np.zeros(len(encoded), dtype=np.int64)
        if len(encoded) > 1:
            starts[1:] = np.cumsum(lens[:-1] + 1)
        buf = np.frombuffer(b"\n".join(encoded) + b"\n", dtype=np.uint8)
        return cls(buf=buf, starts=starts, ends=starts + lens, encoded=encoded)

    @property
    def n_docs(self) -> int:
        return len(self.starts)

    def doc_of_position(self) -> np.ndarray:
        """int32[total]: index of the document each byte belongs to (separators belong to the preceding doc)."""
        return self._doc_of_position

    @cached_property
    def _doc_of_position(self) -> np.ndarray:
        marks = np.zeros(len(self.buf), dtype=np.int32)
        marks[self.starts[1:]] = 1
        return np.cumsum(marks, dtype=np.int32)

    def segment_sum(self, mask: np.ndarray) -> np.ndarray:
        """float64[n]: per-document count of True positions of a bool[total] mask (separators must be False)."""
        if self.n_docs == 0:
            return np.zeros(0)
        # every document owns at least its separator byte, so the reduceat segments are never empty
        return np.add.reduceat(mask, self.starts, dtype=np.int64).astype(np.float64)

    def word_bytes(self) -> np.ndarray:
        return self._word

    def blank_bytes(self) -> np.ndarray:
        return self._blank

    def digit_bytes(self) -> np.ndarray:
        return _DIGIT[self.buf]

    @cached_property
    def _word(self) -> np.ndarray:
        return _WORD[self.buf]

    @cached_property
    def _blank(self) -> np.ndarray:
        return _WS[self.buf]


def run_starts(mask: np.ndarray) -> np.ndarray:
    """bool[total]: True where a run of True begins (the separator before each doc is never part of a run)."""
    out = mask.copy()
    out[1:] &= ~mask[:-1]
    return out


def truncated(docs: ByteDocs, max_bytes: int) -> ByteDocs:
    """The same documents cut to their first ``max_bytes`` bytes (a cut UTF-8 character is harmless for hashing)."""
    if docs.n_docs == 0 or int((docs.ends - docs.starts).max()) <= max_bytes:
        return docs
    if docs.encoded is not None:
        return ByteDocs.from_encoded([b[:max_bytes] for b in docs.encoded])
    cut = [docs.buf[s : min(e, s + max_bytes)].tobytes() for s, e in zip(docs.starts, docs.ends)]
    return ByteDocs.from_encoded(cut)
