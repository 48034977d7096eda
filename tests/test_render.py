"""Renderer: budget, both responses present, no double BOS, swap symmetry, multi-turn, policies, templates."""

from __future__ import annotations

import pytest
from _data_fixtures import tiny_bpe

import arena_kd.data.render as render
from arena_kd.data.render import render_batch
from arena_kd.data.schema import make_frame, swap_frame

LONG = "the sea is wide and blue and deep " * 40


@pytest.fixture(scope="module")
def toks():
    return {"llama": tiny_bpe("llama"), "bert": tiny_bpe("bert"), "none": tiny_bpe("none")}


@pytest.fixture(scope="module")
def frame():
    rows = [
        {"id": "short", "prompt": ["What is the capital?"], "response_a": ["Paris."],
         "response_b": ["London, I think."], "label": 0},
        {"id": "long_a", "prompt": ["Write a poem about the sea."], "response_a": [LONG],
         "response_b": ["A short poem."], "label": 1},
        {"id": "long_all", "prompt": [LONG], "response_a": [LONG + "x"], "response_b": [LONG * 2], "label": 2},
        {"id": "multi", "prompt": ["first question", "second question", "third question"],
         "response_a": ["ans a1 " * 20, "ans a2 " * 20, "ans a3 final"],
         "response_b": ["ans b1 " * 20, "", "ans b3 final"], "label": 0},
        {"id": "empty_b", "prompt": ["q"], "response_a": ["hello"], "response_b": [""], "label": 0},
    ]
    return make_frame(rows)


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("style", ["llama", "bert", "none"])
@pytest.mark.parametrize("truncation", ["budget", "left", "keep_last_turns"])
@pytest.mark.parametrize("max_length", [40, 64, 200, 2048])
def test_budget_never_exceeded_and_responses_survive(toks, frame, style, truncation, max_length):
    tok = toks[style]
    out = render_batch(frame, tok, max_length, truncation, 0.3)
    assert len(out) == len(frame)
    for row, ids in zip(frame.itertuples(), out):
        assert len(ids) <= max_length
        # each response keeps at least one token whenever it has text
        text = _decode(tok, ids)
        a_part = text.split("<response_a>: ")[1].split("\n\n<response_b>: ")[0]
        b_part = text.split("<response_b>: ")[1]
        assert a_part.strip(), (row.id, text)
        if row.id != "empty_b":
            assert b_part.replace("</s>", "").replace("[SEP]", "").strip(), (row.id, text)
        if max_length == 2048 and truncation != "keep_last_turns":  # everything fits: nothing is cut
            assert row.response_a[-1].strip()[-5:] in a_part
    # whole budget used when the texts are long
    assert len(out[2]) >= max_length - 2


def test_specials_wrapped_once_no_double_bos(toks):
    df = make_frame([{"id": "1", "prompt": ["<s> hi <s>"], "response_a": ["[CLS] a [SEP]"], "response_b": ["</s> b"],
                      "label": 0}])
    llama, bert = toks["llama"], toks["bert"]
    ids = render_batch(df, llama, 64)[0]
    bos = llama.convert_tokens_to_ids("<s>")
    assert ids[0] == bos and ids.count(bos) == 1  # special strings inside user text stay text
    ids = render_batch(df, bert, 64)[0]
    cls, sep = bert.convert_tokens_to_ids("[CLS]"), bert.convert_tokens_to_ids("[SEP]")
    assert ids[0] == cls and ids[-1] == sep and ids.count(cls) == 1 and ids.count(sep) == 1
    assert not set(render_batch(df, toks["none"], 64)[0]) & {bos, cls, sep}


@pytest.mark.parametrize("truncation", ["budget", "left", "keep_last_turns"])
def test_swap_symmetry_and_determinism(toks, frame, truncation):
    tok = toks["llama"]
    swapped = render_batch(frame, tok, 80, truncation, 0.2, swap=True)
    assert swapped == render_batch(swap_frame(frame), tok, 80, truncation, 0.2)
    assert swapped != render_batch(frame, tok, 80, truncation, 0.2)
    assert render_batch(frame, tok, 80, truncation, 0.2) == render_batch(frame.copy(), tok, 80, truncation, 0.2)


def test_prompt_capped_and_longer_response_trimmed_first(toks, frame):
    tok = toks["none"]
    max_length = 120
    ids = render_batch(frame.iloc[[2]], tok, max_length, "budget", 0.2)[0]
    text = _decode(tok, ids)
    prompt_part = text.split("<prompt>: ")[1].split("\n\n<response_a>")[0]
    n_prompt = len(tok(prompt_part, add_special_tokens=False)["input_ids"])
    fixed = sum(len(tok(h, add_special_tokens=False)["input_ids"]) for h in render.HEADERS)
    assert n_prompt <= int((max_length - fixed) * 0.2) + 1
    # long_a: response A is long, B short -> B kept whole, A trimmed
    text = _decode(tok, render_batch(frame.iloc[[1]], tok, 80, "budget", 0.2)[0])
    assert text.endswith("A short poem.")
    assert text.split("<response_a>: ")[1].startswith("the sea is wide")


def test_left_truncation_keeps_ends(toks):
    tok = toks["none"]
    df = make_frame([{"id": "1", "prompt": ["start " * 50 + "END_P"], "response_a": ["begin " * 50 + "END_A"],
                      "response_b": ["go " * 50 + "END_B"], "label": 0}])
    text = _decode(tok, render_batch(df, tok, 80, "left", 0.2)[0])
    assert "END_P" in text and "END_A" in text and text.endswith("END_B")
    text = _decode(tok, render_batch(df, tok, 80, "budget", 0.2)[0])
    assert "END_A" not in text and "END_B" not in text


def test_multiturn_markers_and_keep_last_turns(toks, frame):
    tok = toks["none"]
    full = _decode(tok, render_batch(frame.iloc[[3]], tok, 4096, "budget", 0.2)[0])
    assert "[turn 1] first question" in full and "[turn 3] third question" in full
    assert full.index("[turn 1] ans a1") < full.index("[turn 3] ans a3 final") < full.index("<response_b>")
    # a budget too small for all turns: keep_last_turns keeps the last turn whole, numbered as such
    small = _decode(tok, render_batch(frame.iloc[[3]], tok, 90, "keep_last_turns", 0.2)[0])
    assert "[turn 3] third question" in small and "ans a3 final" in small and "ans b3 final" in small
    assert "first question" not in small
    cut = _decode(tok, render_batch(frame.iloc[[3]], tok, 90, "budget", 0.2)[0])
    assert "[turn 1] first" in cut and "ans a3 final" not in cut


def test_char_precut_equals_full_tokenisation(toks, frame, monkeypatch):
    tok = toks["llama"]
    for trunc in ("budget", "left", "keep_last_turns"):
        fast = render_batch(frame, tok, 48, trunc, 0.2)
        monkeypatch.setattr(render, "CHARS_PER_TOKEN_CAP", 10**6)
        exact = render_batch(frame, tok, 48, trunc, 0.2)
        monkeypatch.undo()
        assert fast == exact
    # a cap so low that cut texts have too few tokens: the fallback re-tokenises and stays exact
    monkeypatch.setattr(render, "CHARS_PER_TOKEN_CAP", 0)
    monkeypatch.setattr(render, "CUT_MARGIN", 1)
    low = render_batch(frame, tok, 48, "budget", 0.2)
    monkeypatch.undo()
    assert low == render_batch(frame, tok, 48, "budget", 0.2)


def test_chat_template(toks, frame):
    tok = tiny_bpe("llama")
    tok.chat_template = ("{% for m in messages %}<s>USER: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    ids = render_batch(frame, tok, 100, "budget", 0.2, template="chat")
    bos = tok.convert_tokens_to_ids("<s>")
    for x in ids:
        assert len(x) <= 100 and x[0] == bos and x.count(bos) == 1
        text = _decode(tok, x)
        assert text.startswith("<s>USER: <prompt>: ") and text.endswith("</s>ASSISTANT:")
    swapped = render_batch(swap_frame(frame), tok, 100, template="chat")
    assert render_batch(frame, tok, 100, template="chat", swap=True) == swapped
    from arena_kd.common.errors import UserError

    with pytest.raises(UserError, match="no chat template"):
        render_batch(frame, toks["none"], 100, template="chat")


def test_bad_arguments(toks, frame):
    with pytest.raises(ValueError, match="leaves no room"):
        render_batch(frame, toks["llama"], 10)
    with pytest.raises(ValueError, match="truncation"):
        render_batch(frame, toks["llama"], 64, "middle")
    with pytest.raises(ValueError, match="prompt_fraction"):
        render_batch(frame, toks["llama"], 64, "budget", 1.5)


def test_allocate_properties():
    for avail in (3, 10, 101):
        for n in [(0, 0, 0), (500, 1, 1), (5, 500, 500), (500, 500, 2), (1, 2, 3), (500, 0, 7)]:
            p, a, b = render.allocate(*n, avail, 0.9)
            assert p + a + b <= avail and p <= n[0] and a <= n[1] and b <= n[2]
            assert (a >= 1 or n[1] == 0) and (b >= 1 or n[2] == 0)
            if sum(n) <= avail:
                assert (p, a, b) == n


@pytest.mark.parametrize("style", ["llama", "bert"])
def test_encode_texts_matches_the_hf_wrapper(toks, style):
    tok = tiny_bpe(style)
    tok.backend_tokenizer.enable_truncation(8)  # a tokenizer.json may ship with truncation on
    texts = ["hello <s> world [CLS] x", LONG, "", "the sea"]
    ref = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    tok.backend_tokenizer.enable_truncation(8)
    tok.backend_tokenizer.encode_special_tokens = False
    assert render.encode_texts(tok, texts) == ref
    assert len(ref[1]) > 8 and tok.backend_tokenizer.encode_special_tokens is False  # state restored
    assert tok("<s>", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("<s>")]


def test_cut_text_never_splits_words():
    text = "alpha beta gamma delta " * 10
    cut = render._cut_text(text, 30, keep_end=False)
    assert text.startswith(cut) and len(cut) <= 30 and text[len(cut)].isspace()
    cut = render._cut_text(text, 30, keep_end=True)
    assert text.endswith(cut) and len(cut) <= 30 and cut[0].isspace()
    assert render._cut_text("x" * 100, 30, keep_end=False) is None  # one long word: tokenised whole
    assert render._cut_text("x" * 100, 30, keep_end=True) is None


@pytest.mark.parametrize("style", ["llama", "bert"])
@pytest.mark.parametrize("truncation", ["budget", "left", "keep_last_turns"])
@pytest.mark.parametrize("max_length", [40, 200])
def test_spans_locate_each_fields_text_after_its_header(toks, frame, style, truncation, max_length):
    tok = toks[style]
    ids, spans = render.render_batch_spans(frame, tok, max_length, truncation, 0.3)
    assert ids == render_batch(frame, tok, max_length, truncation, 0.3)  # the same rendering
    headers = render.encode_texts(tok, list(render.HEADERS))
    for row, x, fields in zip(frame.itertuples(), ids, spans):
        ends = [0] + [hi for _, hi in fields]
        for (lo, hi), header, prev_end in zip(fields, headers, ends):
            assert prev_end <= lo - len(header) and lo <= hi <= len(x)  # in order, never overlapping
            assert x[lo - len(header):lo] == header  # each range starts right after its field's header
        (_, _), (a0, a1), (b0, b1) = fields
        assert x[a1:b0] == headers[2]  # A's text runs up to B's header
        assert a1 > a0  # a response with text keeps a token
        if row.id == "empty_b":
            assert b1 == b0
        if max_length == 200 and truncation == "budget" and row.id == "short":
            assert _decode(tok, x[a0:a1]).strip() == "Paris."


def test_spans_of_the_swapped_rendering_exchange_the_responses(toks, frame):
    tok = toks["llama"]
    ids, spans = render.render_batch_spans(frame, tok, 64)
    ids_s, spans_s = render.render_batch_spans(frame, tok, 64, swap=True)
    for x, xs, (_, a, b), (_, a_s, b_s) in zip(ids, ids_s, spans, spans_s):
        # the same response's tokens, from its start; water-filling hands an odd token to the first of two equally
        # long responses, so a kept length may differ by one
        for mine, theirs in ((x[a[0]:a[1]], xs[b_s[0]:b_s[1]]), (x[b[0]:b[1]], xs[a_s[0]:a_s[1]])):
            n = min(len(mine), len(theirs))
            assert mine[:n] == theirs[:n] and abs(len(mine) - len(theirs)) <= 1
