"""Containers: the records of a CSV, JSON lines, JSON or Parquet file, before any layout is interpreted.

:func:`read_raw` returns a :class:`RawTable`: the records as dicts, their columns, and where each record sits in the
file (the row label every message names, see :func:`arena_kd.data.row_checks.row_label`). The layouts
(:mod:`arena_kd.data.layouts`) turn the records into pairs.
Containers: CSV, JSON lines, JSON (a list of objects or JSON lines), Parquet — told apart by the file's bytes, not its
name (:func:`arena_kd.data.text.sniff_container`), gzip / bzip2 / xz / zip compressed or not
(:func:`arena_kd.data.text.read_file_bytes`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from arena_kd.common.errors import UserError, data_error
from arena_kd.data.row_checks import ValidationStats, row_label
from arena_kd.data.text import decode_bytes, raise_csv_field_limit, read_file_bytes, sniff_container


class RawTable:
    """Records of a file as a list of dicts plus where each one sits (row label for messages)."""

    def __init__(self, path: Path, columns: list[str], records: list[dict], wheres: list[str], stats: ValidationStats):
        self.path, self.columns, self.records, self.wheres, self.stats = path, columns, records, wheres, stats


def _read_csv(path: Path, raw: bytes, stats: ValidationStats) -> RawTable:
    raise_csv_field_limit()
    # UTF-8 (BOM dropped); stray undecodable bytes become lone surrogates, repaired (and counted) per field
    # below; a file with no UTF-8 at all is read as cp1252 / latin-1; UTF-16/32 by their BOM (data.text.decode_bytes)
    text, _ = decode_bytes(raw)
    reader = csv.reader(io.StringIO(text, newline=""))  # only \n, \r\n, \r end lines (not U+2028 etc.)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: empty file (no header row)") from None
    except csv.Error as exc:
        raise UserError(f"{path}: line 1: unreadable CSV header ({exc})") from None
    header = [h.strip() for h in header]
    records, wheres = [], []
    prev_end = reader.line_num
    n = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise data_error(path, row_label(n + 1, prev_end + 1), None, f"unreadable CSV record ({exc})") from None
        start = prev_end + 1
        prev_end = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        n += 1
        where = row_label(n, start)
        if len(fields) != len(header):
            raise data_error(path, where, None,
                             f"has {len(fields)} fields, header has {len(header)} (unbalanced quotes?)")
        records.append(dict(zip(header, fields)))
        wheres.append(where)
    return RawTable(path, header, records, wheres, stats)


def _read_json(path: Path, raw: bytes, stats: ValidationStats) -> RawTable:
    text = decode_bytes(raw)[0].lstrip("\ufeff")
    records, wheres = [], []
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON array of objects
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise data_error(path, None, None, f"invalid JSON at line {exc.lineno} ({exc.msg})") from None
        for i, obj in enumerate(data, 1):
            if not isinstance(obj, dict):
                raise data_error(path, i, None, f"expected a JSON object, got {type(obj).__name__}")
            records.append(obj)
            wheres.append(str(i))
    else:  # JSON lines: row = n-th object, line = physical line (they differ when blank lines are present)
        n = 0
        for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 etc. may sit inside strings
            if not line.strip():
                continue
            n += 1
            where = row_label(n, lineno)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise data_error(path, where, None, f"not valid JSON ({exc.msg} at char {exc.pos})") from None
            if not isinstance(obj, dict):
                raise data_error(path, where, None, f"expected a JSON object per line, got {type(obj).__name__}")
            records.append(obj)
            wheres.append(where)
    columns: list[str] = []
    for r in records[:1000]:
        for k in r:
            if k not in columns:
                columns.append(k)
    return RawTable(path, columns, records, wheres, stats)


def _read_parquet(path: Path, raw: bytes, stats: ValidationStats) -> RawTable:
    try:
        df = pd.read_parquet(io.BytesIO(raw))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        first_line = str(exc).splitlines()[0][:120]
        raise UserError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {first_line})") from None
    records = df.to_dict("records")
    wheres = [f"{i + 1} (index {i})" for i in range(len(df))]  # 1-based row, and pandas' 0-based position
    return RawTable(path, list(map(str, df.columns)), records, wheres, stats)


def read_raw(path: str | Path) -> RawTable:
    """Read records of a CSV / JSON lines / JSON / Parquet file, compressed or not, whatever its name (no layout
    interpretation yet)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    stats = ValidationStats()
    try:
        raw, _ = read_file_bytes(p)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    readers = {"csv": _read_csv, "json": _read_json, "parquet": _read_parquet}
    table = readers[sniff_container(raw)](p, raw, stats)
    if not table.records:
        raise UserError(f"{p}: no data rows")
    return table
