"""Row checks while reading raw pair files: turn-list parsing, unicode repair, label checks, unique ids, and
the cells of a record (missing values, repaired text, row ids, JSON-encoded values).
The readers (:mod:`arena_kd.data.readers`) call them; the `arena-kd validate-data` report is :mod:`.validate`.

Row numbers in every message are 1-based *data rows* as a user sees them: the first row
after a CSV header is row 1. For CSV files the physical line where the record starts is
given too ("row 17 (line 18)"), since quoted fields may span lines; for JSON lines the row
is the line number; for Parquet it is the 1-based row index.

Problems that make a file unusable raise :class:`arena_kd.common.errors.UserError` (one line,
via :func:`arena_kd.common.errors.data_error`). Problems that the real Kaggle data has and that
can be repaired without guessing are repaired and counted in :class:`ValidationStats`:
``null`` entries inside turn lists (kept as ""), lone surrogates / undecodable bytes
(replaced by U+FFFD), empty responses (kept, flagged).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from arena_kd.common.errors import UserError, data_error
from arena_kd.data.text import repair_text


@dataclass
class ValidationStats:
    """Counts of repaired or flagged problems found while reading one file."""

    rows: int = 0
    null_turns: int = 0  # `null` entries inside turn lists, kept as ""
    repaired_unicode: int = 0  # strings with lone surrogates / undecodable bytes, repaired
    empty_responses: int = 0  # rows where response A or B is empty in every turn
    empty_prompts: int = 0  # rows whose prompt is empty in every turn
    rows_with_null_turns: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind -> first few row locations
    _null_rows: set = field(default_factory=set, repr=False)

    def note(self, kind: str, where: str, limit: int = 3) -> None:
        ex = self.examples.setdefault(kind, [])
        if len(ex) < limit:
            ex.append(where)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def row_label(row: int, line: int | None = None) -> str:
    """'17 (line 18)' for CSV records, '17' otherwise; used as the `row` of data_error."""
    return f"{row} (line {line})" if line is not None else str(row)


def clean_turns(turns: list, stats: ValidationStats, path, where: str, column: str) -> list[str]:
    """Validate one list of turns: None -> "" (counted), non-strings refused, unicode repaired."""
    out: list[str] = []
    had_null = False
    for t in turns:
        if t is None:
            stats.null_turns += 1
            had_null = True
            stats.note("null_turns", f"row {where}, column '{column}'")
            out.append("")
            continue
        if not isinstance(t, str):
            raise data_error(path, where, column,
                             f"turn entries must be strings or null, got {type(t).__name__}: {str(t)[:40]!r}")
        t, repaired = repair_text(t)
        if repaired:
            stats.repaired_unicode += 1
            stats.note("repaired_unicode", f"row {where}, column '{column}'")
        out.append(t)
    if had_null and where not in stats._null_rows:
        stats._null_rows.add(where)
        stats.rows_with_null_turns += 1
    return out


def parse_turn_list(raw: Any, stats: ValidationStats, path, where: str, column: str) -> list[str]:
    """Parse a Kaggle-style JSON-encoded list of turns (a string like '["hi", null]')."""
    if isinstance(raw, (list, tuple, np.ndarray)):
        value = list(raw)
    else:
        if raw is None or (isinstance(raw, float) and np.isnan(raw)):
            raise data_error(path, where, column, "empty cell; expected a JSON list of turns like [\"...\"]")
        text = str(raw)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise data_error(path, where, column, f"not valid JSON ({exc.msg} at char {exc.pos}); "
                             "expected a list of turns like [\"...\"]") from None
        if isinstance(value, str):  # a bare JSON string: one turn
            value = [value]
        if not isinstance(value, list):
            raise data_error(path, where, column, f"expected a JSON list of turns, got {type(value).__name__}")
    if not value:
        raise data_error(path, where, column, "empty turn list")
    return clean_turns(value, stats, path, where, column)


def check_turn_counts(prompt: list, ra: list, rb: list, path, where: str) -> None:
    """Prompt and both responses must have one entry per turn."""
    if not (len(prompt) == len(ra) == len(rb)):
        raise data_error(
            path, where, "response_a" if len(ra) != len(prompt) else "response_b",
            f"turn counts differ: prompt has {len(prompt)}, response_a {len(ra)}, response_b {len(rb)}",
        )


def flag_empty(prompt: list[str], ra: list[str], rb: list[str], stats: ValidationStats, where: str) -> None:
    if not any(s.strip() for s in ra) or not any(s.strip() for s in rb):
        stats.empty_responses += 1
        stats.note("empty_responses", f"row {where}")
    if not any(s.strip() for s in prompt):
        stats.empty_prompts += 1
        stats.note("empty_prompts", f"row {where}")


def parse_one_hot(values: list[Any], names: list[str], path, where: str) -> int:
    """Kaggle winner_model_a / winner_model_b / winner_tie -> 0/1/2; must be exactly one-hot."""
    bits = []
    for v, name in zip(values, names):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise data_error(path, where, name, f"label must be 0 or 1, got {v!r}") from None
        if f not in (0.0, 1.0):
            raise data_error(path, where, name, f"label must be 0 or 1, got {v!r}")
        bits.append(int(f))
    if sum(bits) != 1:
        raise data_error(path, where, ",".join(names), f"labels must be exactly one-hot, got {bits}")
    return bits.index(1)


def check_unique_ids(ids: list[str], wheres: list[str], path) -> None:
    seen: dict[str, str] = {}
    for i, w in zip(ids, wheres):
        if i in seen:
            raise data_error(path, w, "id", f"duplicate id {i!r} (first seen at row {seen[i]})")
        seen[i] = w


def require_columns(columns, needed, path, fmt: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} for the {fmt} layout "
                        f"(has: {', '.join(map(str, columns))})")


# --------------------------------------------------------------------------- cells


def is_missing(v: Any) -> bool:
    """A cell with no value: None, NaN, or blank text."""
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def cell_text(v: Any, stats: ValidationStats, path, where: str, column: str) -> str | None:
    """A text cell (model name, source) with its unicode repaired (and counted); None when missing."""
    if is_missing(v):
        return None
    s, repaired = repair_text(str(v))
    if repaired:
        stats.repaired_unicode += 1
        stats.note("repaired_unicode", f"row {where}, column '{column}'")
    return s


def row_id(rec: dict, i: int, path, where: str, fallback_prefix: str) -> str:
    """The record's ``id`` as text (an integral float without its '.0'); '<prefix>-<i>' when the file has no ids."""
    v = rec.get("id")
    if is_missing(v):
        if "id" in rec:
            raise data_error(path, where, "id", "empty id")
        return f"{fallback_prefix}-{i:06d}"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def maybe_json(v: Any) -> Any:
    """Values stored as JSON text (CSV cells, Parquet strings) are decoded; others returned as is."""
    if isinstance(v, str):
        s = v.strip()
        if s[:1] in ("[", "{"):
            try:
                return json.loads(s)
            except json.JSONDecodeError:
                return v
    if isinstance(v, np.ndarray):
        return list(v)
    return v
