"""Layouts: the records of a pair file (:class:`arena_kd.data.containers.RawTable`) -> rows of the canonical table.

Supported layouts (``fmt``; ``auto`` detects from the columns, :func:`detect_format`):
  kaggle  the competition's train.csv (``id, prompt, response_a, response_b`` as JSON-encoded
          turn lists, one-hot ``winner_model_a/_b/_tie``, optional ``model_a/_b``) and test.csv
          (no winner columns -> label NA).
  arena   the Chatbot Arena conversation layout (``lmsys/chatbot_arena_conversations``,
          ``lmsys/mt_bench_human_judgments``): ``conversation_a/_b`` lists of ``{role, content}``,
          ``winner`` in model_a | model_b | tie | tie (bothbad).
  pairs   chosen/rejected pairs: ``chosen, rejected`` as HH-RLHF dialogues
          ("\\n\\nHuman: ... \\n\\nAssistant: ..."), or ``prompt, chosen, rejected`` (strings, lists of
          turns, or lists of messages). Which answer becomes A is randomised by ``seed``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np

from arena_kd.common.errors import UserError, data_error
from arena_kd.common.keys import LABELS
from arena_kd.data.containers import RawTable
from arena_kd.data.row_checks import (
    ValidationStats,
    cell_text,
    check_turn_counts,
    clean_turns,
    flag_empty,
    is_missing,
    maybe_json,
    parse_one_hot,
    parse_turn_list,
    require_columns,
    row_id,
)

ARENA_WINNERS = {"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2}
USER_ROLES = {"user", "human", "prompter"}
ASSISTANT_ROLES = {"assistant", "gpt", "bot", "model", "chatbot"}


def detect_format(columns: Iterable[str], path) -> str:
    """The layout of a file from its columns; a one-line UserError when none fits."""
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


def _kaggle(table: RawTable) -> list[dict]:
    path, stats = table.path, table.stats
    require_columns(table.columns, ["id", "prompt", "response_a", "response_b"], path, "kaggle")
    present = [c for c in LABELS if c in table.columns]
    if present and len(present) != 3:
        missing = [c for c in LABELS if c not in present]
        raise UserError(f"{path}: has {', '.join(present)} but not {', '.join(missing)}; "
                        "labelled files need all three winner columns")
    labelled = bool(present)
    rows = []
    for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
        prompt = parse_turn_list(rec["prompt"], stats, path, where, "prompt")
        ra = parse_turn_list(rec["response_a"], stats, path, where, "response_a")
        rb = parse_turn_list(rec["response_b"], stats, path, where, "response_b")
        check_turn_counts(prompt, ra, rb, path, where)
        flag_empty(prompt, ra, rb, stats, where)
        label = parse_one_hot([rec[c] for c in LABELS], LABELS, path, where) if labelled else None
        rows.append({
            "id": row_id(rec, i, path, where, path.stem),
            "prompt": prompt, "response_a": ra, "response_b": rb, "label": label,
            "model_a": cell_text(rec.get("model_a"), stats, path, where, "model_a"),
            "model_b": cell_text(rec.get("model_b"), stats, path, where, "model_b"),
        })
    return rows


def _split_messages(messages: Any, stats: ValidationStats, path, where: str, column: str) -> tuple[list, list]:
    """A list of {role, content} -> (user turns, assistant turns), paired per turn."""
    messages = maybe_json(messages)
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
    use_qid = ("id" not in table.columns and all(not is_missing(q) for q in qids)
               and len({str(q) for q in qids}) == len(qids))
    rows = []
    for i, (rec, where) in enumerate(zip(table.records, table.wheres)):
        pa, ra = _split_messages(rec.get("conversation_a"), stats, path, where, "conversation_a")
        pb, rb = _split_messages(rec.get("conversation_b"), stats, path, where, "conversation_b")
        if len(pa) != len(pb):
            raise data_error(path, where, "conversation_b",
                             f"turn counts differ: conversation_a has {len(pa)} user turns, conversation_b {len(pb)}")
        prompt = [a if a else b for a, b in zip(pa, pb)]  # both sides see the same prompts
        check_turn_counts(prompt, ra, rb, path, where)
        flag_empty(prompt, ra, rb, stats, where)
        label = None
        if labelled:
            w = rec.get("winner")
            key = str(w).strip().lower() if not is_missing(w) else ""
            if key not in ARENA_WINNERS:
                raise data_error(path, where, "winner",
                                 f"unknown winner {w!r} (expected model_a, model_b, tie or 'tie (bothbad)')")
            label = ARENA_WINNERS[key]
        rid = str(rec["question_id"]) if use_qid else row_id(rec, i, path, where, path.stem)
        rows.append({
            "id": rid, "prompt": prompt, "response_a": ra, "response_b": rb, "label": label,
            "model_a": cell_text(rec.get("model_a"), stats, path, where, "model_a"),
            "model_b": cell_text(rec.get("model_b"), stats, path, where, "model_b"),
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
    value = maybe_json(value)
    if is_missing(value) or (isinstance(value, list) and not value):
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
    pv = maybe_json(value)
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
        if has_prompt and not is_missing(rec["prompt"]):
            prompt = _prompt_turns(rec["prompt"], stats, path, where)
        dialogue_prompt = pc if pc is not None else pr
        # dialogues that carry their own user turns (HH style) are the fuller record of the prompt
        if dialogue_prompt is not None and (prompt is None or len(dialogue_prompt) >= len(prompt)):
            prompt = dialogue_prompt
        if prompt is None:
            raise data_error(path, where, "chosen",
                             "no prompt: give a 'prompt' column or HH-style 'Human:/Assistant:' dialogues")
        if pc is not None and pr is not None and len(pc) != len(pr):
            raise data_error(path, where, "rejected",
                             f"turn counts differ: chosen has {len(pc)} user turns, rejected {len(pr)}")
        # single answers to a multi-turn prompt: earlier turns unknown -> answer the last turn
        for side in (chosen, rejected):
            if len(side) < len(prompt) and len(side) == 1:
                side[:0] = [""] * (len(prompt) - 1)
        check_turn_counts(prompt, chosen, rejected, path, where)
        a, b, label = (rejected, chosen, 1) if flips[i] else (chosen, rejected, 0)
        flag_empty(prompt, a, b, stats, where)
        rows.append({"id": row_id(rec, i, path, where, path.stem), "prompt": prompt, "response_a": a, "response_b": b,
                     "label": label})
    return rows


def layout_rows(table: RawTable, layout: str, seed: int = 0) -> list[dict]:
    """The records of ``table`` as rows of the canonical table (without ``source``), read as ``layout`` (one of
    :data:`arena_kd.common.keys.FORMATS` but ``auto``); ``seed`` randomises which answer is A for pairs."""
    if layout == "kaggle":
        return _kaggle(table)
    if layout == "arena":
        return _arena(table)
    return _pairs(table, seed)
