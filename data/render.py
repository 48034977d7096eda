"""Render a pair into model input ids under a token budget, for any HF tokenizer.

Layout ("blocks", the 1st-place layout): ``<prompt>: … <response_a>: … <response_b>: …``;
multi-turn conversations interleave per turn. Fields are tokenised separately (batched,
fast tokenizer, no special tokens), cut to budget, joined, and wrapped once with the
tokenizer's own special tokens — so there is never a double BOS and the budget is exact.

Truncation policies:
  budget           prompt capped at ``prompt_fraction`` of the budget; the responses share
                   the rest, the longer one trimmed first; each field keeps its start.
  left             the same budgets, but every field keeps its end (drops the oldest tokens).
  keep_last_turns  keep the most recent turns that fit whole, then ``budget`` on what is left.
Both responses always survive (each keeps at least ``min(len, budget/2)`` of its share).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import pandas as pd

HEADERS = ("<prompt>: ", "\n\n<response_a>: ", "\n\n<response_b>: ")
TURN_SEP = "\n\n"


def _specials(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special ids the tokenizer adds around one sequence."""
    return _specials_cached(id(tokenizer), tokenizer)


@lru_cache(maxsize=32)
def _specials_cached(_key, tokenizer) -> tuple[list[int], list[int]]:
    probe = "hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    return [], []


def _join_turns(turns: Sequence[str] | None) -> str:
    turns = [t if isinstance(t, str) else "" for t in (turns or [])]
    if len(turns) <= 1:
        return turns[0] if turns else ""
    return TURN_SEP.join(f"[turn {i + 1}] {t}" for i, t in enumerate(turns))


def _share(lengths: list[int], budget: int) -> list[int]:
    """Water-filling: give each field min(len, fair share); the longer field is trimmed first."""
    alloc = [0] * len(lengths)
    remaining = max(budget, 0)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for pos, i in enumerate(order):
        fair = remaining // (len(order) - pos)
        alloc[i] = min(lengths[i], fair)
        remaining -= alloc[i]
    return alloc


def _cut(ids: list[int], n: int, keep_end: bool) -> list[int]:
    if n >= len(ids):
        return ids
    if n <= 0:
        return []
    return ids[-n:] if keep_end else ids[:n]


def _fields_for(row_turns: tuple, policy: str, swap: bool) -> tuple[str, str, str]:
    prompt, ra, rb = row_turns
    if swap:
        ra, rb = rb, ra
    return _join_turns(prompt), _join_turns(ra), _join_turns(rb)


def render_batch(
    df: pd.DataFrame,
    tokenizer,
    max_length: int,
    truncation: str = "budget",
    prompt_fraction: float = 0.2,
    swap: bool = False,
) -> list[list[int]]:
    """Input ids for every row of ``df`` (canonical table), in order. ``swap`` renders B as A and A as B."""
    prefix, suffix = _specials(tokenizer)
    header_ids = [tokenizer(h, add_special_tokens=False)["input_ids"] for h in HEADERS]
    fixed = len(prefix) + len(suffix) + sum(len(h) for h in header_ids)
    avail = max_length - fixed
    if avail < 3:
        raise ValueError(f"max_length={max_length} leaves no room for text (needs > {fixed + 2})")

    rows = list(zip(df["prompt"], df["response_a"], df["response_b"]))
    if truncation == "keep_last_turns":
        rows = [_keep_last_turns(r, tokenizer, avail) for r in rows]
    texts = [_fields_for(r, truncation, swap) for r in rows]
    flat = [t for triple in texts for t in triple]
    enc = tokenizer(flat, add_special_tokens=False)["input_ids"]
    keep_end = truncation == "left"
    out: list[list[int]] = []
    for i in range(len(texts)):
        p, a, b = enc[3 * i], enc[3 * i + 1], enc[3 * i + 2]
        p_cap = int(avail * prompt_fraction)
        p_n = min(len(p), max(p_cap, avail - len(a) - len(b)))
        a_n, b_n = _share([len(a), len(b)], avail - p_n)
        p_n = min(len(p), avail - a_n - b_n)  # hand back what the responses did not use
        body = (
            header_ids[0] + _cut(p, p_n, keep_end)
            + header_ids[1] + _cut(a, a_n, keep_end)
            + header_ids[2] + _cut(b, b_n, keep_end)
        )
        out.append(prefix + body + suffix)
    return out


def _keep_last_turns(row: tuple, tokenizer, avail: int) -> tuple:
    """Drop the oldest whole turns (prompt, A and B together) until the rest fits, keeping at least the last."""
    prompt, ra, rb = (list(x or []) for x in row)
    n = len(prompt)
    if n <= 1:
        return prompt, ra, rb
    cost = []
    for t in range(n):
        parts = [prompt[t] if t < len(prompt) else "", ra[t] if t < len(ra) else "", rb[t] if t < len(rb) else ""]
        parts = [x if isinstance(x, str) else "" for x in parts]
        cost.append(sum(len(ids) for ids in tokenizer(parts, add_special_tokens=False)["input_ids"]) + 8)
    start, total = n - 1, cost[-1]
    while start > 0 and total + cost[start - 1] <= avail:
        start -= 1
        total += cost[start]
    return prompt[start:], ra[start:], rb[start:]
