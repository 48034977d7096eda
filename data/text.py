"""Bytes → text for every reader: one encoding detection and one text repair, standard library only.

Both the strict pair reader (:mod:`arena_kd.data.containers`) and the tolerant test reader
(:mod:`arena_kd.submission.tolerant_reader`) decode files with :func:`decode_bytes` and repair strings with
:func:`repair_text`; the submission and ``kaggle/predict.py`` read the ids of a CSV file with
:func:`read_id_column`. ``kaggle/predict.py`` uses this module before it has installed or imported
anything else, which is why it imports nothing outside the standard library.

Encoding detection, in order:
  1. UTF-8 (a leading byte-order mark is dropped);
  2. mostly UTF-8 with a few undecodable bytes (at least one valid multi-byte sequence in the file):
     the bad bytes become lone surrogates (``surrogateescape``) that :func:`repair_text` turns into U+FFFD,
     so one corrupt byte costs one character, not the file;
  3. no valid multi-byte UTF-8 sequence at all and more than one non-ASCII byte: a single-byte legacy
     file — cp1252 (Windows "ANSI", latin-1 plus curly quotes in 0x80–0x9F), or latin-1 when a byte is
     undefined in cp1252 (latin-1 decodes every byte, so this step cannot fail). A single stray byte in
     an otherwise ASCII file is taken for corruption (step 2), not for evidence of an encoding.
Line endings (\\n, \\r\\n, \\r) are left to the ``csv`` module (read with ``newline=""``).
"""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

_HIGH_BYTE = re.compile(rb"[\x80-\xff]")
_VALID_NON_ASCII = re.compile("[^\x00-\x7f\udc80-\udcff]")  # a character only a valid multi-byte sequence yields


def raise_csv_field_limit() -> None:
    """Let ``csv`` read fields of any size (its default refuses fields over 131,072 characters)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def decode_bytes(raw: bytes) -> tuple[str, str]:
    """(text, encoding used) of a file's bytes; never raises (see module docstring for the order)."""
    try:
        text = raw.decode("utf-8")
        return (text[1:], "utf-8-sig") if text.startswith("\ufeff") else (text, "utf-8")
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", "surrogateescape")
    high_bytes = _HIGH_BYTE.finditer(raw)
    if _VALID_NON_ASCII.search(text) or next(high_bytes, None) is None or next(high_bytes, None) is None:
        return text.lstrip("\ufeff"), "utf-8 (undecodable bytes replaced)"
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def repair_text(s: str) -> tuple[str, bool]:
    """Replace lone surrogates (from JSON escapes or undecodable bytes) by U+FFFD. Returns (text, repaired)."""
    try:
        s.encode("utf-8")
        return s, False
    except UnicodeEncodeError:
        # surrogatepass keeps valid pairs together; lone halves become U+FFFD on decode
        fixed = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return fixed, True


def csv_header(row: list[str]) -> list[str]:
    """Column names of a CSV header row: surrounding spaces and a byte-order mark dropped from each."""
    return [h.strip().lstrip("\ufeff") for h in row]


def read_id_column(path: str | Path) -> list[str]:
    """The ``id`` column of a CSV file, in order, each id once (a repeated id once, like the test reader); decoded
    like every reader (UTF-8, BOM, cp1252/latin-1; any field size). ValueError when there is no ``id`` column."""
    raise_csv_field_limit()
    text, _ = decode_bytes(Path(path).read_bytes())
    rows = csv.reader(io.StringIO(text, newline=""), strict=False)
    header = csv_header(next(rows, []))
    if "id" not in header:
        raise ValueError(f"{path}: column 'id' is missing")
    k = header.index("id")
    ids = [repair_text(r[k].strip())[0] for r in rows if len(r) > k and r[k].strip()]
    return list(dict.fromkeys(ids))
