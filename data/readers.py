"""Readers: every supported pair file -> the canonical table of :mod:`data.schema`.

Supported layouts (``fmt``; ``auto`` detects from the columns):
  kaggle  the competition's train.csv (``id, prompt, response_a, response_b`` as JSON-encoded
          turn lists, one-hot ``winner_model_a/_b/_tie``, optional ``model_a/_b``) and test.csv
          (no winner columns -> label NA).
  arena   the Chatbot Arena conversation layout (``lmsys/chatbot_arena_conversations``,
          ``lmsys/mt_bench_human_judgments``): ``conversation_a/_b`` lists of ``{role, content}``,
          ``winner`` in model_a | model_b | tie | tie (bothbad).
  pairs   chosen/rejected pairs: ``chosen, rejected`` as HH-RLHF dialogues
          ("\\n\\nHuman: ... \\n\\nAssistant: ..."), or ``prompt, chosen, rejected`` (strings, lists of
          turns, or lists of messages). Which answer becomes A is randomised by ``seed``.
Containers: .csv, .jsonl/.ndjson (JSON lines), .json (a list of objects or JSON lines), .parquet.

Everything read is validated (see :mod:`arena_kd.data.row_checks`); problems raise a one-line
:class:`arena_kd.common.errors.UserError`; repairs are counted in ``df.attrs["validation"]``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from arena_kd.common.errors import UserError, data_error
from arena_kd.data.row_checks import (
    ValidationStats,
    check_turn_counts,
    check_unique_ids,
    clean_turns,
    flag_empty,
    parse_one_hot,
    parse_turn_list,
    repair_text,
    require_columns,
    row_label,
)
from arena_kd.data.schema import LABEL_NAMES, make_frame
from arena_kd.data.text import decode_bytes, raise_csv_field_limit

WINNER_COLUMNS = ["winner_model_a", "winner_model_b", "winner_tie"]
ARENA_WINNERS = {"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2}
FORMATS = ("auto", "kaggle", "arena", "pairs")
USER_ROLES = {"user", "human", "prompter"}
ASSISTANT_ROLES = {"assistant", "gpt", "bot", "model", "chatbot"}


# --------------------------------------------------------------------------- raw records


class RawTable:
    """Records of a file as a list of dicts plus where each one sits (row label for messages)."""

    def __init__(self, path: Path, columns: list[str], records: list[dict], wheres: list[str], stats: ValidationStats):
        self.path, self.columns, self.records, self.wheres, self.stats = path, columns, records, wheres, stats


def _read_csv(path: Path, stats: ValidationStats) -> RawTable:
    raise_csv_field_limit()
    # UTF-8 (BOM dropped); stray undecodable bytes become lone surrogates, repaired (and counted) per field
    # below; a file with no UTF-8 at all is read as cp1252 / latin-1 (data.text.decode_bytes)
    text, _ = decode_bytes(path.read_bytes())
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
            raise data_error(path, where, None, f"has {len(fields)} fields, header has {len(header)} (unbalanced quotes?)")
        records.append(dict(zip(header, fields)))
        wheres.append(where)
    return RawTable(path, header, records, wheres, stats)


def _read_json(path: Path, stats: ValidationStats) -> RawTable:
    text = path.read_bytes().decode("utf-8", "surrogateescape").lstrip("\ufeff")
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


def _read_parquet(path: Path, stats: ValidationStats) -> RawTable:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    records = df.to_dict("records")
    wheres = [f"{i + 1} (index {i})" for i in range(len(df))]  # 1-based row, and pandas' 0-based position
    return RawTable(path, list(map(str, df.columns)), records, wheres, stats)


def read_raw(path: str | Path) -> RawTable:
    """Read records of a CSV / JSON lines / JSON / Parquet file (no layout interpretation yet)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    stats = ValidationStats()
    suffix = p.suffix.lower()
    if suffix == ".csv":
        table = _read_csv(p, stats)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        table = _read_json(p, stats)
    elif suffix in (".parquet", ".pq"):
        table = _read_parquet(p, stats)
    else:
        raise UserError(f"{p}: unknown file type {suffix!r} (expected .csv, .jsonl, .json or .parquet)")
    if not table.records:
        raise UserError(f"{p}: no data rows")
    return table


def detect_format(columns: Iterable[str], path) -> str:
    cols = set(columns)
    if {"conversation_a", "conversation_b"} <= cols:
        return "arena"
    if {"chosen", "rejected"} <= cols:
        return "pairs"
    if {"prompt", "response_a", "response_b"} <= cols:
        return "kaggle"
    raise UserError(
        f"{path}: cannot tell the layout from the columns ({', '.join(sorted(cols))}); expected "
        "prompt/response_a/response_b (kaggle), conversation_a/conversation_b (arena) or chosen/rejected (pairs)"
    )


# --------------------------------------------------------------------------- helpers


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _text(v: Any, stats: ValidationStats, path, where: str, column: str) -> str | None:
    if _is_missing(v):
        return None
    s, repaired = repair_text(str(v))
    if repaired:
        stats.repaired_unicode += 1
        stats.note("repaired_unicode", f"row {where}, column '{column}'")
    return s


def _row_id(rec: dict, i: int, path: Path, where: str, fallback_prefix: str) -> str:
    v = rec.get("id")
    if _is_missing(v):
        if "id" in rec:
            raise data_error(path, where, "id", "empty id")
        return f"{fallback_prefix}-{i:06d}"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _maybe_json(v: Any) -> Any:
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


# --------------------------------------------------------------------------- layouts


def _kaggle(table: RawTable) -> list[dict]:
    path, stats = table.path, table.stats
    require_columns(table.columns, ["id", "prompt", "response_a", "response_b"], path, "kaggle")
    present = [c for c in WINNER_COLUMNS if c in table.columns]
    if present and len(present) != 3:
        missing = [c for c in WINNER_COLUMNS if c not in present]
        raise UserError(f"{path}: has {', '.join(present)} but not {', '.join(missing)}; labelled files need all three winner columns")
    labelled = bool(present)
    rows = []
    for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
        prompt = parse_turn_list(rec["prompt"], stats, path, where, "prompt")
        ra = parse_turn_list(rec["response_a"], stats, path, where, "response_a")
        rb = parse_turn_list(rec["response_b"], stats, path, where, "response_b")
        check_turn_counts(prompt, ra, rb, path, where)
        flag_empty(prompt, ra, rb, stats, where)
        label = parse_one_hot([rec[c] for c in WINNER_COLUMNS], WINNER_COLUMNS, path, where) if labelled else None
        rows.append({
            "id": _row_id(rec, i, path, where, path.stem),
            "prompt": prompt, "response_a": ra, "response_b": rb, "label": label,
            "model_a": _text(rec.get("model_a"), stats, path, where, "model_a"),
            "model_b": _text(rec.get("model_b"), stats, path, where, "model_b"),
        })
    return rows


def _split_messages(messages: Any, stats: ValidationStats, path, where: str, column: str) -> tuple[list, list]:
    """A list of {role, content} -> (user turns, assistant turns), paired per turn."""
    messages = _maybe_json(messages)
    if not isinstance(messages, list) or not messages:
        raise data_error(path, where, column, "expected a non-empty list of {role, content} messages")
    users: list = []
    assistants: list = []
    for m in messages:
        if isinstance(m, np.ndarray):
            m = list(m)
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise data_error(path, where, column, f"each message needs 'role' and 'content', got {str(m)[:60]!r}")
        role = str(m["role"]).strip().lower()
        content = m["content"]
        if role in USER_ROLES:
            users.append(content)
            assistants.append(None)
        elif role in ASSISTANT_ROLES:
            if not users:  # an assistant opening: pair with an empty prompt
                users.append("")
                assistants.append(None)
            if assistants[-1] is None:
                assistants[-1] = content
            else:  # consecutive assistant messages: one turn
                assistants[-1] = f"{assistants[-1]}\n\n{content if content is not None else ''}"
        elif role == "system":
            continue
        else:
            raise data_error(path, where, column, f"unknown role {m['role']!r} (expected user/assistant/system)")
    users = clean_turns(users, stats, path, where, column)
    assistants = clean_turns(assistants, stats, path, where, column)
    return users, assistants


def _arena(table: RawTable) -> list[dict]:
    path, stats = table.path, table.stats
    require_columns(table.columns, ["conversation_a", "conversation_b"], path, "arena")
    labelled = "winner" in table.columns
    qids = [r.get("question_id") for r in table.records]
    use_qid = "id" not in table.columns and all(not _is_missing(q) for q in qids) and len({str(q) for q in qids}) == len(qids)
    rows = []
    for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
        pa, ra = _split_messages(rec.get("conversation_a"), stats, path, where, "conversation_a")
        pb, rb = _split_messages(rec.get("conversation_b"), stats, path, where, "conversation_b")
        if len(pa) != len(pb):
            raise data_error(path, where, "conversation_b", f"turn counts differ: conversation_a has {len(pa)} user turns, conversation_b {len(pb)}")
        prompt = [a if a else b for a, b in zip(pa, pb)]  # both sides see the same prompts
        check_turn_counts(prompt, ra, rb, path, where)
        flag_empty(prompt, ra, rb, stats, where)
        label = None
        if labelled:
            w = rec.get("winner")
            key = str(w).strip().lower() if not _is_missing(w) else ""
            if key not in ARENA_WINNERS:
                raise data_error(path, where, "winner", f"unknown winner {w!r} (expected model_a, model_b, tie or 'tie (bothbad)')")
            label = ARENA_WINNERS[key]
        rid = str(rec["question_id"]) if use_qid else _row_id(rec, i, path, where, path.stem)
        rows.append({
            "id": rid, "prompt": prompt, "response_a": ra, "response_b": rb, "label": label,
            "model_a": _text(rec.get("model_a"), stats, path, where, "model_a"),
            "model_b": _text(rec.get("model_b"), stats, path, where, "model_b"),
        })
    return rows


_HH_SPLIT = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def parse_hh_dialogue(text: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [('user', 'hi'), ('assistant', 'hello')]."""
    t = text if text.startswith("\n\n") else "\n\n" + text
    parts = _HH_SPLIT.split(t)
    msgs = []
    for k in range(1, len(parts) - 1, 2):
        role = "user" if parts[k] == "Human" else "assistant"
        msgs.append((role, parts[k + 1].strip()))
    return msgs


def _pair_side(value: Any, stats, path, where: str, column: str) -> tuple[list[str] | None, list[str]]:
    """One side of a chosen/rejected pair -> (user turns or None if the side has no prompt, assistant turns)."""
    value = _maybe_json(value)
    if _is_missing(value) or (isinstance(value, list) and not value):
        raise data_error(path, where, column, "empty answer")
    if isinstance(value, list):
        if all(isinstance(m, dict) for m in value):
            return _split_messages(value, stats, path, where, column)
        return None, clean_turns(value, stats, path, where, column)
    text = str(value)
    if "\n\nAssistant:" in text or text.startswith("Human:") or text.startswith("\n\nHuman:"):
        msgs = parse_hh_dialogue(text)
        if not msgs:
            raise data_error(path, where, column, "no 'Human:'/'Assistant:' turns found in the dialogue")
        users, assistants = _split_messages([{"role": r, "content": c} for r, c in msgs], stats, path, where, column)
        return users, assistants
    return None, clean_turns([text], stats, path, where, column)


def _prompt_turns(value: Any, stats, path, where: str) -> list[str]:
    pv = _maybe_json(value)
    if isinstance(pv, list) and pv and all(isinstance(m, dict) for m in pv):
        return _split_messages(pv, stats, path, where, "prompt")[0]
    if isinstance(pv, list):
        return clean_turns(pv, stats, path, where, "prompt")
    text = str(pv)
    if "Human:" in text:
        users = [c for r, c in parse_hh_dialogue(text) if r == "user"]
        if users:
            return clean_turns(users, stats, path, where, "prompt")
    return clean_turns([text], stats, path, where, "prompt")


def _pairs(table: RawTable, seed: int) -> list[dict]:
    path, stats = table.path, table.stats
    require_columns(table.columns, ["chosen", "rejected"], path, "pairs")
    has_prompt = "prompt" in table.columns
    flips = np.random.default_rng(seed).random(len(table.records)) < 0.5
    rows = []
    for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
        pc, chosen = _pair_side(rec["chosen"], stats, path, where, "chosen")
        pr, rejected = _pair_side(rec["rejected"], stats, path, where, "rejected")
        prompt = None
        if has_prompt and not _is_missing(rec["prompt"]):
            prompt = _prompt_turns(rec["prompt"], stats, path, where)
        dialogue_prompt = pc if pc is not None else pr
        # dialogues that carry their own user turns (HH style) are the fuller record of the prompt
        if dialogue_prompt is not None and (prompt is None or len(dialogue_prompt) >= len(prompt)):
            prompt = dialogue_prompt
        if prompt is None:
            raise data_error(path, where, "chosen", "no prompt: give a 'prompt' column or HH-style 'Human:/Assistant:' dialogues")
        if pc is not None and pr is not None and len(pc) != len(pr):
            raise data_error(path, where, "rejected", f"turn counts differ: chosen has {len(pc)} user turns, rejected {len(pr)}")
        # single answers to a multi-turn prompt: earlier turns unknown -> answer the last turn
        for side in (chosen, rejected):
            if len(side) < len(prompt) and len(side) == 1:
                side[:0] = [""] * (len(prompt) - 1)
        check_turn_counts(prompt, chosen, rejected, path, where)
        a, b, label = (rejected, chosen, 1) if flips[i] else (chosen, rejected, 0)
        flag_empty(prompt, a, b, stats, where)
        rows.append({"id": _row_id(rec, i, path, where, path.stem), "prompt": prompt, "response_a": a, "response_b": b, "label": label})
    return rows


# --------------------------------------------------------------------------- public API


def read_pairs(path: str | Path, fmt: str = "auto", seed: int = 0) -> pd.DataFrame:
    """Read and validate a pair file into the canonical table (see data/schema.py).

    ``fmt``: auto | kaggle | arena | pairs. ``seed`` randomises which answer is A for chosen/rejected pairs.
    Repaired/flagged counts are in ``df.attrs["validation"]``. Raises UserError on malformed input.
    """
    if fmt not in FORMATS:
        raise UserError(f"{path}: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    table = read_raw(path)
    layout = detect_format(table.columns, table.path) if fmt == "auto" else fmt
    if layout == "kaggle":
        rows = _kaggle(table)
    elif layout == "arena":
        rows = _arena(table)
    else:
        rows = _pairs(table, seed)
    check_unique_ids([r["id"] for r in rows], table.wheres, table.path)
    # a `source` column (e.g. the sample's mtbench_human / hh_harmless) is kept per row; rows without one
    # (and files without the column) get the file's stem, so mixed training files keep their origins apart
    has_source = "source" in table.columns
    for r, rec, where in zip(rows, table.records, table.wheres):
        src = _text(rec.get("source"), table.stats, table.path, where, "source") if has_source else None
        r["source"] = src.strip() if src and src.strip() else table.path.stem
    df = make_frame(rows)
    table.stats.rows = len(df)
    df.attrs["validation"] = table.stats.as_dict()
    df.attrs["format"] = layout
    df.attrs["path"] = str(table.path)
    return df


def read_kaggle_test(path: str | Path) -> pd.DataFrame:
    """Kaggle test.csv (id, prompt, response_a, response_b) -> canonical table with label NA."""
    df = read_pairs(path, fmt="kaggle")
    df["label"] = pd.array([pd.NA] * len(df), dtype="Int8")
    return df


def read_labels(path: str | Path) -> pd.DataFrame:
    """Labels of a labelled file -> DataFrame[id (str), label (int 0/1/2)].

    Kaggle layout files are read from their id and winner columns only (fast); other layouts via read_pairs.
    """
    table = read_raw(path)
    if "id" in table.columns and all(c in table.columns for c in WINNER_COLUMNS):
        ids, labels = [], []
        for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
            ids.append(_row_id(rec, i, table.path, where, table.path.stem))
            labels.append(parse_one_hot([rec[c] for c in WINNER_COLUMNS], WINNER_COLUMNS, table.path, where))
        check_unique_ids(ids, table.wheres, table.path)
        return pd.DataFrame({"id": ids, "label": np.asarray(labels, dtype=np.int64)})
    df = read_pairs(path)
    if df["label"].isna().any():
        first = int(np.flatnonzero(df["label"].isna().to_numpy())[0])
        raise data_error(table.path, table.wheres[first], None, "no label (this file is unlabelled; labels need winner columns)")
    return pd.DataFrame({"id": df["id"], "label": df["label"].astype(np.int64)})


def read_sample_submission(path: str | Path) -> pd.DataFrame:
    """Kaggle sample_submission.csv -> DataFrame[id, winner_model_a, winner_model_b, winner_tie] (id as str)."""
    table = read_raw(path)
    require_columns(table.columns, ["id", *WINNER_COLUMNS], table.path, "sample_submission")
    ids, probs = [], []
    for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
        ids.append(_row_id(rec, i, table.path, where, table.path.stem))
        row = []
        for c in WINNER_COLUMNS:
            try:
                v = float(rec[c])
            except (TypeError, ValueError):
                raise data_error(table.path, where, c, f"not a number: {rec[c]!r}") from None
            if not (0.0 <= v <= 1.0):
                raise data_error(table.path, where, c, f"probability out of [0, 1]: {v}")
            row.append(v)
        probs.append(row)
    check_unique_ids(ids, table.wheres, table.path)
    out = pd.DataFrame(probs, columns=WINNER_COLUMNS)
    out.insert(0, "id", ids)
    return out


__all__ = ["read_pairs", "read_kaggle_test", "read_labels", "read_sample_submission", "detect_format", "parse_hh_dialogue", "LABEL_NAMES"]
