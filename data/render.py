"""Render a pair into model input ids under a token budget, for any HF tokenizer.

Layout ("blocks", the 1st-place layout)::

    <prompt>: …  \\n\\n<response_a>: …  \\n\\n<response_b>: …

Multi-turn conversations: each field joins its turns oldest first as ``[turn i] text``
separated by blank lines (single-turn fields are plain text). Fields are tokenised separately
(one batched call to the fast tokenizer, no special tokens, special-token strings inside user
text are *not* turned into special ids), cut to budget, joined, and wrapped once: with the
tokenizer's own special tokens (``template="blocks"``: BERT gets [CLS] … [SEP], Llama gets
<s> …) or with the tokenizer's chat template as one user message (``template="chat"``). So
there is never a double BOS and ``len(ids) <= max_length`` always.

Truncation policies:
  budget           the prompt is capped at ``prompt_fraction`` of the budget (it takes more when
                   the responses are short); the responses share the rest, the longer one trimmed
                   first (water-filling); each field keeps its start.
  left             the same budgets, but every field keeps its end (drops the oldest tokens).
  keep_last_turns  drop the oldest whole turns (prompt, A and B together) until the rest fits,
                   keeping at least the last turn; then ``budget`` on what is left.
Both responses always survive: a non-empty response keeps at least one token, and at least
half of the response budget when it needs it.

Speed: texts far longer than any budget are cut (at whitespace, never inside a word) to
``CHARS_PER_TOKEN_CAP`` characters per token of budget before tokenising. A cut text must still
yield ``CUT_MARGIN`` tokens more than the budget, otherwise it is re-tokenised whole; so the kept
tokens are those of the whole text for every tokenizer that splits words at whitespace.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

HEADERS = ("<prompt>: ", "\n\n<response_a>: ", "\n\n<response_b>: ")
TURN_SEP = "\n\n"
TRUNCATIONS = ("budget", "left", "keep_last_turns")
TEMPLATES = ("blocks", "chat")
CHARS_PER_TOKEN_CAP = 8  # no tokenizer averages more characters per token on real text
CUT_MARGIN = 64  # tokens beyond the budget a cut text must still yield (boundary effects are << this)
_SENTINEL = "\u2063ARENA_KD_CONTENT\u2063"


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text: no special tokens added, special-token strings in the text kept as text.

    Fast tokenizers go straight to the Rust backend (``encode_batch``; ~10% less CPU than the HF wrapper),
    with truncation and padding switched off exactly as the wrapper itself does on every call.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and hasattr(backend, "encode_special_tokens"):
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = True
        try:
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        finally:
            backend.encode_special_tokens = previous
    try:
        enc = tokenizer(texts, add_special_tokens=False, split_special_tokens=True,
                        return_attention_mask=False, return_token_type_ids=False)
    except TypeError:  # slow tokenizers without split_special_tokens
        enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    return enc["input_ids"]


def special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special ids the tokenizer adds around one sequence (e.g. [CLS] / [SEP], or <s> / none)."""
    probe = "hello world"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    return [], []


def chat_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids of the tokenizer's chat template around one user message, generation prompt included."""
    if not getattr(tokenizer, "chat_template", None):
        from arena_kd.common.errors import UserError

        raise UserError(f"render.template=chat: tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat "
                        "template; use template: blocks")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                         add_generation_prompt=True)
    if _SENTINEL not in text:
        from arena_kd.common.errors import UserError

        raise UserError(f"render.template=chat: the chat template of {getattr(tokenizer, 'name_or_path', '')!r} "
                        "does not keep the message text verbatim; use template: blocks")
    pre, _, post = text.partition(_SENTINEL)
    # the template's own text carries its special tokens (e.g. '<bos>', '<|im_start|>'): parse them as specials
    pre_ids = tokenizer(pre, add_special_tokens=False)["input_ids"] if pre else []
    post_ids = tokenizer(post, add_special_tokens=False)["input_ids"] if post else []
    bos, _ = special_wrap(tokenizer)
    if bos and pre_ids[: len(bos)] != bos:
        pre_ids = bos + pre_ids
    return list(pre_ids), list(post_ids)


def join_turns(turns: Sequence[str] | None, first_turn: int = 1, multi: bool | None = None) -> str:
    """Turns -> one field text. ``first_turn`` numbers the turns when older ones were dropped."""
    turns = [t if isinstance(t, str) else "" for t in (turns if turns is not None else [])]
    if multi is None:
        multi = len(turns) > 1
    if not multi:
        return turns[0] if turns else ""
    return TURN_SEP.join(f"[turn {first_turn + i}] {t}" for i, t in enumerate(turns))


def share_budget(lengths: list[int], budget: int) -> list[int]:
    """Water-filling: each field gets min(len, fair share of what is left); the longest is trimmed first."""
    alloc = [0] * len(lengths)
    remaining = max(budget, 0)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for pos, i in enumerate(order):
        fair = remaining // (len(order) - pos)
        alloc[i] = min(lengths[i], fair)
        remaining -= alloc[i]
    return alloc


def allocate(n_prompt: int, n_a: int, n_b: int, avail: int, prompt_fraction: float) -> tuple[int, int, int]:
    """Token counts kept of (prompt, A, B) for fields of the given lengths under ``avail`` tokens."""
    reserve = min(n_a, 1) + min(n_b, 1)  # both responses survive
    p_cap = int(avail * prompt_fraction)
    p_n = min(n_prompt, max(p_cap, avail - n_a - n_b), avail - reserve)
    a_n, b_n = share_budget([n_a, n_b], avail - p_n)
    p_n = min(n_prompt, avail - a_n - b_n)  # hand back what the responses did not use
    return p_n, a_n, b_n


def _cut(ids: list[int], n: int, keep_end: bool) -> list[int]:
    if n >= len(ids):
        return ids
    if n <= 0:
        return []
    return ids[-n:] if keep_end else ids[:n]


def _cut_text(text: str, cap: int, keep_end: bool) -> str | None:
    """At most ``cap`` characters from the kept side, cut at whitespace (so no word is split); None if no whitespace
    near the cut."""
    if keep_end:
        window = text[-cap:]
        k = next((i for i in range(min(len(window), cap // 2)) if window[i].isspace()), -1)
        return window[k:] if k >= 0 else None
    window = text[:cap]
    k = next((i for i in range(len(window) - 1, cap // 2, -1) if window[i].isspace()), -1)
    return window[:k] if k >= 0 else None


def _tokenize_fields(tokenizer, texts: list[str], avail: int, keep_end: bool) -> list[list[int]]:
    """Token ids of each field text; the ``avail`` tokens on the kept side equal those of the whole text (module
    doc)."""
    cap = CHARS_PER_TOKEN_CAP * (avail + CUT_MARGIN)
    short = [(_cut_text(t, cap, keep_end) if len(t) > cap else t) for t in texts]
    cut = [s is not None and s is not t for s, t in zip(short, texts)]
    short = [t if s is None else s for s, t in zip(short, texts)]  # no whitespace near the cut: whole text
    enc = encode_texts(tokenizer, short)
    redo = [i for i, c in enumerate(cut) if c and len(enc[i]) < avail + CUT_MARGIN]
    if redo:
        for i, ids in zip(redo, encode_texts(tokenizer, [texts[i] for i in redo])):
            enc[i] = ids
    return enc


def render_batch(*args, **kwargs) -> list[list[int]]:
    """Input ids for every row of ``df`` (canonical table), in order; each list has length <= max_length. Arguments as
    :func:`render_batch_spans`, which also returns where each field lies in the ids."""
    return render_batch_spans(*args, **kwargs)[0]


Span = tuple[int, int]


def render_batch_spans(
    df: pd.DataFrame,
    tokenizer,
    max_length: int,
    truncation: str = "budget",
    prompt_fraction: float = 0.2,
    swap: bool = False,
    template: str = "blocks",
) -> tuple[list[list[int]], list[tuple[Span, Span, Span]]]:
    """Input ids for every row of ``df`` (canonical table), in order (each list has length <= max_length), and per row
    the half-open token ranges of the prompt's, the first response's and the second response's text in its ids
    (headers and special tokens excluded; a field cut to nothing is an empty range): what answer pooling reads.

    ``swap`` renders B as A and A as B (equal to rendering ``data.schema.swap_frame(df)``; the first response is B).
    ``template``: "blocks" (tokenizer's own special tokens) or "chat" (the tokenizer's chat template).
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    if not 0 < prompt_fraction < 1:
        raise ValueError(f"prompt_fraction must be in (0, 1), got {prompt_fraction}")
    prefix, suffix = chat_wrap(tokenizer) if template == "chat" else special_wrap(tokenizer)
    header_ids = encode_texts(tokenizer, list(HEADERS))
    fixed = len(prefix) + len(suffix) + sum(len(h) for h in header_ids)
    avail = max_length - fixed
    if avail < 3:
        raise ValueError(f"max_length={max_length} leaves no room for text (needs at least {fixed + 3})")

    prompts = list(df["prompt"])
    ras, rbs = list(df["response_a"]), list(df["response_b"])
    if swap:
        ras, rbs = rbs, ras
    firsts = [1] * len(prompts)
    multis = [len(p) > 1 for p in prompts]
    if truncation == "keep_last_turns":
        prompts, ras, rbs, firsts = _keep_last_turns(prompts, ras, rbs, tokenizer, avail)
    flat: list[str] = []
    for p, a, b, f, m in zip(prompts, ras, rbs, firsts, multis):
        flat += [join_turns(p, f, m), join_turns(a, f, m), join_turns(b, f, m)]
    keep_end = truncation == "left"
    enc = _tokenize_fields(tokenizer, flat, avail, keep_end)
    out: list[list[int]] = []
    spans: list[tuple[Span, Span, Span]] = []
    for i in range(len(prompts)):
        p, a, b = enc[3 * i], enc[3 * i + 1], enc[3 * i + 2]
        p_n, a_n, b_n = allocate(len(p), len(a), len(b), avail, prompt_fraction)
        ids, fields = list(prefix), []
        for header, field in zip(header_ids, (_cut(p, p_n, keep_end), _cut(a, a_n, keep_end), _cut(b, b_n, keep_end))):
            ids += header
            fields.append((len(ids), len(ids) + len(field)))
            ids += field
        out.append(ids + suffix)
        spans.append(tuple(fields))
    return out, spans


def _keep_last_turns(prompts, ras, rbs, tokenizer, avail: int):
    """Per row, drop the oldest whole turns until the rest fits ``avail`` tokens (keeping at least the last turn).

    Returns (prompts, ras, rbs, first_turn_numbers). One batched tokenizer call for all turns of all multi-turn rows.
    """
    prompts, ras, rbs = [list(x) for x in prompts], [list(x) for x in ras], [list(x) for x in rbs]
    firsts = [1] * len(prompts)
    marker = len(encode_texts(tokenizer, [TURN_SEP + "[turn 10] "])[0])
    parts, owners = [], []
    for r, p in enumerate(prompts):
        if len(p) > 1:
            for t in range(len(p)):
                for field in (prompts[r], ras[r], rbs[r]):
                    x = field[t] if t < len(field) else ""
                    parts.append(x if isinstance(x, str) else "")
                owners.append((r, t))
    enc = _tokenize_fields(tokenizer, parts, avail, keep_end=False)
    cost: dict[int, list[int]] = {}
    for k, (r, t) in enumerate(owners):
        cost.setdefault(r, []).append(sum(len(enc[3 * k + j]) for j in range(3)) + 3 * marker)
    for r, c in cost.items():
        start, total = len(c) - 1, c[-1]
        while start > 0 and total + c[start - 1] <= avail:
            start -= 1
            total += c[start]
        prompts[r], ras[r], rbs[r] = prompts[r][start:], ras[r][start:], rbs[r][start:]
        firsts[r] = start + 1
    return prompts, ras, rbs, firsts
