"""Stacker features: one vectorised function for training and test, and the A/B swap of a feature table.

``compute_features(df, student, embedder, tfidf)`` returns one row per pair (same order as ``df``, RangeIndex).
Column naming carries the swap rule used by :func:`swap_features`:

  ``p_*``            prompt statistics (unchanged by a swap)
  ``a_*`` / ``b_*``  response A / response B feature (exchanged by a swap)
  ``diff_*``         A − B difference (negated)
  ``ratio_*``        (A + 1) / (B + 1) (inverted)
  ``sim_*``          symmetric A-vs-B similarity and ``ab_*`` symmetric flags (unchanged)
  ``stu_<src>_<kind>_<cls>``  student output; src ∈ orig|swap|avg, kind ∈ logp|prob, cls ∈ a|b|tie.
                     A swap exchanges orig↔swap (the model's prediction on the swapped rendering of the
                     swapped pair is its original prediction) and classes a↔b.

Text statistics per field (turns joined with a blank line): ``chars`` (Unicode characters), ``words`` (runs of
non-blank characters), ``tokens`` (a cheap stand-in for subword tokens: runs of word characters plus every
punctuation character — the regex ``\\w+|[^\\w\\s]`` evaluated on bytes), ``turns``, ``newlines``, ``headers``
(markdown ``#`` lines), ``list_items`` (lines starting with ``-``/``*``/``+``/``•`` or ``1.``/``1)``), ``bold``
(``**…**`` pairs), ``code_blocks`` (``` fenced pairs), ``digits``, ``urls`` (``http(s)://``), ``refusals``
(occurrences of common refusal phrases, case-insensitive) and ``questions`` (question marks).

Similarity: hashed TF-IDF cosine on words and on byte 4-grams (:mod:`arena_kd.blend.similarity`), word Jaccard,
A vs B and prompt vs each response; sentence-embedding cosines when an embedder is given. Undefined
similarities (an empty text) are NaN, which LightGBM treats as missing.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from arena_kd.blend.similarity import SimilarityModel, row_cosine, row_jaccard
from arena_kd.blend.text_bytes import ByteDocs, run_starts, truncated
from arena_kd.common.keys import CLASS_SUFFIXES
from arena_kd.common.metrics import softmax
from arena_kd.data.schema import swap_logits

TEXT_STATS = (
    "chars", "words", "tokens", "turns", "newlines", "headers", "list_items", "bold",
    "code_blocks", "digits", "urls", "refusals", "questions",
)
REFUSAL_PHRASES = (
    "sorry", "apologi", "i cannot", "i can't", "i can not", "unable to", "not able to", "as an ai",
    "language model", "not appropriate", "i won't",
)
# phrases grouped under a substring they all contain: the group is scanned only when the anchor occurs
_REFUSAL_GROUPS = tuple(
    (anchor, tuple(p for p in REFUSAL_PHRASES if anchor in p))
    for anchor in ("sorry", "apologi", "i can", "able to", "as an ai", "language model", "not appropriate", "i won't")
)
assert sorted(p for _, g in _REFUSAL_GROUPS for p in g) == sorted(REFUSAL_PHRASES)
# line-start patterns written as "\n<pattern>" and matched on "\n" + text: the literal "\n" prefix lets the regex
# engine jump between newlines instead of trying every position (3-4x faster than re.M with "^")
_HEADER = re.compile(r"\n[ \t]{0,3}#{1,6}[ \t]")
_LIST_ITEM = re.compile(r"\n[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]")

_SOURCES = ("orig", "swap", "avg")
CHUNK_ROWS = 2048
WORD_DESIGN = "_word_design"  # a chunk's summed word TF-IDF rows, carried beside its columns


# --------------------------------------------------------------------------- texts


def _is_turn_list(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def join_turns(turns) -> str:
    """A field's turns as one text (blank line between turns); None / NA / non-text turns become ''."""
    if isinstance(turns, str):
        return turns
    if not _is_turn_list(turns):
        return ""
    return "\n\n".join(t for t in turns if isinstance(t, str))


def _turn_info(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(turn count int64[n], has-null bool[n]): a missing field or any non-text turn counts as null."""
    turns = np.zeros(len(series), dtype=np.int64)
    null = np.zeros(len(series), dtype=bool)
    for i, v in enumerate(series):
        if isinstance(v, str):
            turns[i] = 1
        elif _is_turn_list(v):
            turns[i] = len(v)
            null[i] = any(not isinstance(t, str) for t in v)
        else:
            null[i] = True
    return turns, null


def text_stats(texts: list[str], docs: ByteDocs) -> dict[str, np.ndarray]:
    """Per-text counts (float64[n] each, every name of TEXT_STATS but ``turns``); ``docs``: the same texts as bytes."""
    word = docs.word_bytes()
    blank = docs.blank_bytes()
    punct = ~word & ~blank
    out = {
        "chars": np.fromiter((len(t) for t in texts), np.float64, len(texts)),
        "words": docs.segment_sum(run_starts(~blank)),
        "tokens": docs.segment_sum(run_starts(word)) + docs.segment_sum(punct),
        "newlines": docs.segment_sum(docs.buf == 10) - 1.0,  # minus the separator
        "digits": docs.segment_sum(docs.digit_bytes()),
        "headers": np.array([len(_HEADER.findall("\n" + t)) if "#" in t else 0 for t in texts], np.float64),
        "list_items": np.array([len(_LIST_ITEM.findall("\n" + t)) for t in texts], np.float64),
        "bold": np.array([t.count("**") // 2 for t in texts], np.float64),
        "code_blocks": np.array([t.count("```") // 2 for t in texts], np.float64),
        "urls": np.array([t.count("http://") + t.count("https://") for t in texts], np.float64),
        "questions": np.array([t.count("?") + t.count("\uff1f") for t in texts], np.float64),
    }
    out["refusals"] = np.array([_count_refusals(t.lower()) for t in texts], np.float64)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _count_refusals(lowered: str) -> int:
    """Occurrences of REFUSAL_PHRASES in a lower-cased text."""
    n = 0
    for anchor, phrases in _REFUSAL_GROUPS:
        if anchor in lowered:
            n += sum(lowered.count(p) for p in phrases) if len(phrases) > 1 else lowered.count(anchor)
    return n


def _chunks(n: int, size: int = CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def field_texts(df: pd.DataFrame) -> dict[str, list[str]]:
    """{'p','a','b'} -> joined texts of prompt, response_a, response_b."""
    return {
        "p": [join_turns(v) for v in df["prompt"]],
        "a": [join_turns(v) for v in df["response_a"]],
        "b": [join_turns(v) for v in df["response_b"]],
    }


def fit_similarity(df: pd.DataFrame, n_features: int = 262144, max_rows: int = 10000, seed: int = 0) -> SimilarityModel:
    """Fit the TF-IDF IDFs on the prompts and responses of (at most ``max_rows`` seeded-sampled rows of) ``df``."""
    if len(df) > max_rows:
        df = df.iloc[np.sort(np.random.default_rng(seed).permutation(len(df))[:max_rows])]
    model = SimilarityModel.new(n_features=n_features)
    texts = field_texts(df)
    docs = (
        truncated(ByteDocs.from_texts(texts[f][s]), model.max_bytes)
        for s in _chunks(len(df))
        for f in ("p", "a", "b")
    )
    return model.fit(docs)


# --------------------------------------------------------------------------- features


def _pair_block(prefix_a: str, prefix_b: str, name: str, a: np.ndarray, b: np.ndarray,
                ratio: bool) -> dict[str, np.ndarray]:
    out = {f"{prefix_a}{name}": a, f"{prefix_b}{name}": b, f"diff_{name}": a - b}
    if ratio:
        out[f"ratio_{name}"] = (a + 1.0) / (b + 1.0)
    return out


def _text_features(texts: dict[str, list[str]], turn_info: dict, tfidf: SimilarityModel) -> dict[str, np.ndarray]:
    """Length/structure, edge-flag and TF-IDF features of one chunk of rows."""
    docs = {f: ByteDocs.from_texts(texts[f]) for f in ("p", "a", "b")}
    stats = {f: text_stats(texts[f], docs[f]) for f in ("p", "a", "b")}
    for f in ("p", "a", "b"):
        stats[f]["turns"] = turn_info[f][0].astype(np.float64)
    cols: dict[str, np.ndarray] = {}
    for name in TEXT_STATS:
        cols[f"p_{name}"] = stats["p"][name]
    for name in TEXT_STATS:
        cols.update(_pair_block("a_", "b_", name, stats["a"][name], stats["b"][name], ratio=True))
    a_empty = np.array([not t.strip() for t in texts["a"]], dtype=np.float64)
    b_empty = np.array([not t.strip() for t in texts["b"]], dtype=np.float64)
    cols["a_empty"], cols["b_empty"] = a_empty, b_empty
    cols["a_null"], cols["b_null"] = turn_info["a"][1].astype(np.float64), turn_info["b"][1].astype(np.float64)
    cols["ab_identical"] = np.array([x.strip() == y.strip() for x, y in zip(texts["a"], texts["b"])], dtype=np.float64)
    cols["ab_both_empty"] = a_empty * b_empty

    short = {f: truncated(docs[f], tfidf.max_bytes) for f in ("p", "a", "b")}
    for space_name, space in (("word", tfidf.word), ("char", tfidf.char)):
        counts = {f: space.counts(short[f]) for f in ("p", "a", "b")}
        vec = {f: space.transform(short[f], counts=counts[f]) for f in ("p", "a", "b")}
        cols[f"sim_{space_name}_cos_ab"] = row_cosine(vec["a"], vec["b"])
        cols.update(_pair_block("a_", "b_", f"{space_name}_cos_prompt", row_cosine(vec["a"], vec["p"]),
                                row_cosine(vec["b"], vec["p"]), ratio=False))
        if space_name == "word":
            cols[WORD_DESIGN] = vec["p"] + vec["a"] + vec["b"]  # not a column: see features_and_words
            cols["sim_word_jaccard_ab"] = row_jaccard(counts["a"], counts["b"])
            cols.update(_pair_block("a_", "b_", "word_jaccard_prompt", row_jaccard(counts["a"], counts["p"]),
                                    row_jaccard(counts["b"], counts["p"]), ratio=False))
    return cols


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def student_features(orig: np.ndarray, swap: np.ndarray | None) -> dict[str, np.ndarray]:
    """Student columns from logits orig [n,3] and swap [n,3] (swapped back to A/B order; None = use orig).

    avg = mean of the two log-softmaxes, renormalised (the TTA average)."""
    lo = _log_softmax(orig)
    ls = _log_softmax(orig if swap is None else swap)
    la = _log_softmax((lo + ls) / 2.0)
    cols: dict[str, np.ndarray] = {}
    for src, lp in (("orig", lo), ("swap", ls), ("avg", la)):
        for k, c in enumerate(CLASS_SUFFIXES):
            cols[f"stu_{src}_logp_{c}"] = lp[:, k]
        for k, c in enumerate(CLASS_SUFFIXES):
            cols[f"stu_{src}_prob_{c}"] = np.exp(lp[:, k])
    cols["diff_stu_avg_logp"] = la[:, 0] - la[:, 1]
    return cols


def compute_features(df: pd.DataFrame, student: dict | None = None, embedder=None,
                     tfidf: SimilarityModel | None = None, *, n_threads: int = 2) -> pd.DataFrame:
    """Feature table for the canonical pair frame ``df`` (same row order; RangeIndex; float64 columns).

    ``student``: {"orig": logits [n,3], "swap": logits [n,3] or None} in A/B order, or None (no student columns).
    ``embedder``: object with ``encode(list[str]) -> float32[n, d]`` unit rows (e.g. SentenceEmbedder) or None.
    ``tfidf``: fitted :class:`SimilarityModel` (from training); None fits one on ``df`` itself.
    ``n_threads``: worker threads over row chunks (results do not depend on it).
    """
    return features_and_words(df, student, embedder, tfidf, n_threads=n_threads)[0]


def features_and_words(df: pd.DataFrame, student: dict | None = None, embedder=None,
                       tfidf: SimilarityModel | None = None, *, n_threads: int = 2
                       ) -> tuple[pd.DataFrame, sp.csr_matrix | None]:
    """:func:`compute_features` and the sum of the word TF-IDF rows of prompt, A and B, CSR [n, buckets] (None for
    no rows): the source model's input (:func:`arena_kd.blend.source_model.design`) from the same vectors."""
    n = len(df)
    if tfidf is None:
        tfidf = fit_similarity(df)
    texts = field_texts(df)
    turn_info = {f: _turn_info(df[c]) for f, c in (("p", "prompt"), ("a", "response_a"), ("b", "response_b"))}

    def one_chunk(s: slice) -> dict[str, np.ndarray]:
        chunk_texts = {f: texts[f][s] for f in texts}
        chunk_turns = {f: (v[0][s], v[1][s]) for f, v in turn_info.items()}
        return _text_features(chunk_texts, chunk_turns, tfidf)

    # numpy releases the GIL, so two threads overlap one chunk's array work with another's string work
    if n_threads <= 1:
        parts = [one_chunk(s) for s in _chunks(n)]
    else:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            parts = list(pool.map(one_chunk, _chunks(n)))
    words = sp.vstack([p.pop(WORD_DESIGN) for p in parts]).tocsr() if parts else None
    if parts:
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        empty = {f: (np.zeros(0, np.int64), np.zeros(0, bool)) for f in "pab"}
        cols = {k: np.zeros(0) for k in _text_features({f: [] for f in "pab"}, empty, tfidf)}
    if embedder is not None:
        cols.update(embedding_features(texts, embedder))
    if student is not None:
        orig = np.asarray(student["orig"], dtype=np.float64)
        swap = student.get("swap")
        if orig.shape != (n, 3) or (swap is not None and np.asarray(swap).shape != (n, 3)):
            raise ValueError(f"student logits must have shape ({n}, 3)")
        cols.update(student_features(orig, None if swap is None else np.asarray(swap, dtype=np.float64)))
    cols.pop(WORD_DESIGN, None)
    return pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}), words


def embedding_features(texts: dict[str, list[str]], embedder) -> dict[str, np.ndarray]:
    """Cosines of sentence embeddings: A vs B (symmetric), prompt vs A / vs B and their difference; NaN for empty
    texts."""
    n = len(texts["p"])
    emb = embedder.encode(texts["p"] + texts["a"] + texts["b"])
    p, a, b = emb[:n], emb[n : 2 * n], emb[2 * n :]

    def cos(x, y, tx, ty):
        c = np.sum(x.astype(np.float64) * y.astype(np.float64), axis=1)
        empty = np.array([not u.strip() or not v.strip() for u, v in zip(tx, ty)], dtype=bool)
        c[empty] = np.nan
        return c

    cols = {"sim_emb_cos_ab": cos(a, b, texts["a"], texts["b"])}
    cols.update(_pair_block("a_", "b_", "emb_cos_prompt", cos(a, p, texts["a"], texts["p"]),
                            cos(b, p, texts["b"], texts["p"]), ratio=False))
    return cols


# --------------------------------------------------------------------------- swap


def is_student_column(name: str) -> bool:
    return name.startswith("stu_") or name.startswith("diff_stu_")


def _swap_name(name: str) -> str:
    if name.startswith("a_"):
        return "b_" + name[2:]
    if name.startswith("b_"):
        return "a_" + name[2:]
    if name.startswith("stu_"):
        _, src, kind, cls = name.split("_", 3)
        src = {"orig": "swap", "swap": "orig"}.get(src, src)
        cls = {"a": "b", "b": "a"}.get(cls, cls)
        return f"stu_{src}_{kind}_{cls}"
    return name


def swap_features(features: pd.DataFrame) -> pd.DataFrame:
    """The feature table of the A/B-swapped pairs, computed from ``features`` without the texts.

    a_*↔b_*, diff_* negated, ratio_* inverted, stu_orig_*↔stu_swap_* with classes a↔b, the rest unchanged.
    Same columns and order as the input."""
    out = {}
    for name in features.columns:
        src = _swap_name(name)
        if src not in features.columns:
            raise KeyError(f"swap_features: column {name!r} has no swap partner {src!r}")
        col = features[src].to_numpy(dtype=np.float64)
        if name.startswith("diff_"):
            col = -col
        elif name.startswith("ratio_"):
            col = 1.0 / col
        out[name] = col
    return pd.DataFrame(out, index=features.index)[list(features.columns)]


def swap_student(student: dict | None) -> dict | None:
    """The student dict of the A/B-swapped pairs: orig' = swap with classes a↔b, swap' = orig with classes a↔b;
    other keys (e.g. the per-row ``max_length``, which does not depend on the orientation) are kept."""
    if student is None:
        return None
    orig = np.asarray(student["orig"])
    swap = student.get("swap")
    swap = orig if swap is None else np.asarray(swap)
    return {**student, "orig": swap_logits(swap), "swap": swap_logits(orig)}


def student_probs(student: dict) -> np.ndarray:
    """float64[n,3]: the TTA-averaged student probabilities (softmax of the mean log-softmax)."""
    lo = _log_softmax(student["orig"])
    ls = lo if student.get("swap") is None else _log_softmax(student["swap"])
    return softmax((lo + ls) / 2.0)
