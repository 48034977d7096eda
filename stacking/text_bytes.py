"""Texts as one UTF-8 byte buffer, so per-document counts and n-gram hashes are numpy operations.

Documents are joined with a ``\\n`` separator (so a word never spans two documents); document ``i``
occupies ``buf[starts[i]:ends[i]]``. Byte classes: *word* bytes are ASCII letters, digits, ``_`` and every
non-ASCII byte (so accented words and CJK runs count as words); *blank* bytes are ASCII whitespace; the rest
is punctuation.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @classmethod
    def from_texts(cls, texts: list[str]) -> "ByteDocs":
        encoded = [t.encode("utf-8", "replace") for t in texts]
        lens = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        starts = np.zeros(len(encoded), dtype=np.int64)
        if len(encoded) > 1:
            starts[1:] = np.cumsum(lens[:-1] + 1)
        buf = np.frombuffer(b"\n".join(encoded) + b"\n", dtype=np.uint8)
        return cls(buf=buf, starts=starts, ends=starts + lens)

    @property
    def n_docs(self) -> int:
        return len(self.starts)

    def doc_of_position(self) -> np.ndarray:
        """int64[total]: index of the document each byte belongs to (separators belong to the preceding doc)."""
        marks = np.zeros(len(self.buf), dtype=np.int64)
        marks[self.starts[1:]] = 1
        return np.cumsum(marks)

    def segment_sum(self, mask: np.ndarray) -> np.ndarray:
        """int64[n]: per-document count of True positions of a bool[total] mask."""
        cs = np.zeros(len(mask) + 1, dtype=np.int64)
        np.cumsum(mask, out=cs[1:])
        return cs[self.ends] - cs[self.starts]

    def word_bytes(self) -> np.ndarray:
        return _WORD[self.buf]

    def blank_bytes(self) -> np.ndarray:
        return _WS[self.buf]

    def digit_bytes(self) -> np.ndarray:
        return _DIGIT[self.buf]


def run_starts(mask: np.ndarray) -> np.ndarray:
    """bool[total]: True where a run of True begins (the separator before each doc is never part of a run)."""
    out = mask.copy()
    out[1:] &= ~mask[:-1]
    return out


def truncated(docs: ByteDocs, max_bytes: int) -> ByteDocs:
    """The same documents cut to their first ``max_bytes`` bytes (a cut UTF-8 character is harmless for hashing)."""
    if len(docs.ends) == 0 or int((docs.ends - docs.starts).max()) <= max_bytes:
        return docs
    new_lens = np.minimum(docs.ends - docs.starts, max_bytes)
    doc = docs.doc_of_position()
    offset = np.arange(len(docs.buf), dtype=np.int64) - docs.starts[doc]
    keep = (offset < new_lens[doc]) | (offset == docs.ends[doc] - docs.starts[doc])  # text bytes + the separator
    buf = np.ascontiguousarray(docs.buf[keep])
    starts = np.zeros(len(new_lens), dtype=np.int64)
    if len(new_lens) > 1:
        starts[1:] = np.cumsum(new_lens[:-1] + 1)
    return ByteDocs(buf=buf, starts=starts, ends=starts + new_lens)
