"""Bytes → text for every reader: one encoding detection and one text repair, standard library only.

Both the strict pair reader (:mod:`arena_kd.data.containers`) and the tolerant test reader
(:mod:`arena_kd.submission.tolerant_reader`) decode files with :func:`decode_bytes` and repair strings with
:func:`repair_text`; the submission and ``kaggle/predict.py`` read the ids of a CSV file with
:func:`read_id_column`. ``kaggle/predict.py`` uses this module before it has installed or imported
anything else, which is why it imports nothing outside the standard library.

Containers are recognised by their bytes, never by the file name (:func:`read_file_bytes`, :func:`sniff_container`):
a gzip / bzip2 / xz / zip file is decompressed first (``test.csv.gz``, a one-file zip), then Parquet is its ``PAR1``
magic, JSON / JSON lines a first character ``[`` or ``{``, anything else CSV — so ``test.txt`` or a file without an
extension is read like ``test.csv``.

Encoding detection, in order:
  0. a UTF-32 or UTF-16 byte-order mark (LE or BE) decodes the whole file in that encoding (Excel's "Unicode text"
     and PowerShell's default write UTF-16 with a BOM);
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

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import re
import sys
import zipfile
from pathlib import Path

_HIGH_BYTE = re.compile(rb"[\x80-\xff]")
_VALID_NON_ASCII = re.compile("[^\x00-\x7f\udc80-\udcff]")  # a character only a valid multi-byte sequence yields


def raise_csv_field_limit() -> None:
    """Let ``csv`` read fields of any size (its default refuses fields over 131,072 characters)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


# longest first: the UTF-32-LE mark begins with the UTF-16-LE one
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
              (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_COMPRESSED = ((b"\x1f\x8b", "gzip", gzip.decompress), (b"BZh", "bzip2", bz2.decompress),
               (b"\xfd7zXZ\x00", "xz", lzma.decompress))
PARQUET_MAGIC = b"PAR1"


def _unzip(raw: bytes) -> bytes:
    """The one data file of a zip archive (folders and macOS ``__MACOSX`` entries ignored); ValueError otherwise."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
        if len(names) != 1:
            raise ValueError(f"zip archive holds {len(names)} files ({', '.join(names[:3])}); expected one data file")
        return zf.read(names[0])


def read_file_bytes(path: str | Path) -> tuple[bytes, str | None]:
    """(bytes, compression or None) of a file, decompressed when its first bytes say gzip, bzip2, xz or zip.

    Raises ValueError for a compressed file that cannot be decompressed (truncated, several files in a zip)."""
    raw = Path(path).read_bytes()
    for magic, name, decompress in _COMPRESSED:
        if raw.startswith(magic):
            try:
                return decompress(raw), name
            except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
                raise ValueError(f"{path}: not a readable {name} file ({type(exc).__name__}: {exc})") from None
    if raw.startswith(b"PK\x03\x04"):
        try:
            return _unzip(raw), "zip"
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable zip file ({exc})") from None
    return raw, None


def sniff_container(raw: bytes) -> str:
    """'parquet', 'json' (a JSON array or JSON lines) or 'csv' from a file's (decompressed) bytes."""
    if raw.startswith(PARQUET_MAGIC):
        return "parquet"
    head, _ = decode_bytes(raw[:4096])
    first = head.lstrip("\ufeff \t\r\n")[:1]
    return "json" if first in ("[", "{") else "csv"


def decode_bytes(raw: bytes) -> tuple[str, str]:
    """(text, encoding used) of a file's bytes; never raises (see module docstring for the order)."""
    for bom, encoding in _WIDE_BOMS:
        if raw.startswith(bom):
            # a truncated last character (an odd byte count) is replaced, not fatal
            return raw[len(bom):].decode(encoding, "replace"), encoding
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


def _json_ids(text: str) -> list | None:
    """The ``id`` values of a JSON array of objects or of JSON lines (None: no record has an ``id``)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(stripped)
    else:
        records = [json.loads(line) for line in text.split("\n") if line.strip()]
    records = [r for r in records if isinstance(r, dict)]
    if not any("id" in r for r in records):
        return None
    return [r.get("id") for r in records]


def read_id_column(path: str | Path) -> list[str]:
    """The ``id`` column of a CSV (or JSON / JSON lines) file, in order, each id once (a repeated id once, like the
    test reader); compressed or not, decoded like every reader (:func:`read_file_bytes`, :func:`decode_bytes`; any
    field size). ValueError when there is no ``id`` column (or the file is Parquet: that needs pandas)."""
    raw, _ = read_file_bytes(path)
    kind = sniff_container(raw)
    if kind == "parquet":
        raise ValueError(f"{path}: a Parquet file (its ids need pandas)")
    text, _ = decode_bytes(raw)
    if kind == "json":
        try:
            values = _json_ids(text)
        except ValueError as exc:
            raise ValueError(f"{path}: unreadable JSON ({exc})") from None
        if values is None:
            raise ValueError(f"{path}: column 'id' is missing")
        found = (repair_text(str(v).strip())[0] for v in values if v is not None)
        return list(dict.fromkeys(i for i in found if i))
    raise_csv_field_limit()
    rows = csv.reader(io.StringIO(text, newline=""), strict=False)
    header = csv_header(next(rows, []))
    if "id" not in header:
        raise ValueError(f"{path}: column 'id' is missing")
    k = header.index("id")
    ids = [repair_text(r[k].strip())[0] for r in rows if len(r) > k and r[k].strip()]
    return list(dict.fromkeys(ids))
