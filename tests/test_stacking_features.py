"""arena_kd.blend.features: exact counts on crafted rows, similarity edge cases, A/B swap consistency,
embeddings + cache."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd.blend.features import compute_features, fit_similarity, is_student_column, swap_features, swap_student
from arena_kd.blend.similarity import SimilarityModel
from arena_kd.data.schema import make_frame, swap_frame

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "train.csv"

TEXT_A = "# Hi\n- one\n- two\n**b** 42 https://a.b ?\n```\nx\n```"
TEXT_B = "I'm sorry, but I cannot help. As an AI model I can't."


def crafted() -> pd.DataFrame:
    rows = [
        {"id": "c0", "prompt": ["What is 2+2?", "And 3+3?"], "response_a": [TEXT_A, ""], "response_b": [TEXT_B, "ok"],
         "label": 0},
        {"id": "c1", "prompt": ["q1", "q2"], "response_a": ["x", None], "response_b": ["", ""], "label": 1},
        {"id": "c2", "prompt": ["tell me"], "response_a": ["Same answer here."], "response_b": ["Same answer here."],
         "label": 2},
        {"id": "c3", "prompt": ["words"], "response_a": ["alpha beta gamma"], "response_b": ["delta epsilon zeta"],
         "label": 0},
    ]
    return make_frame(rows)


class HashEmbedder:
    """Deterministic stand-in for SentenceEmbedder: unit vector seeded by the text's CRC."""

    def encode(self, texts):
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for i, t in enumerate(texts):
            if t.strip():
                v = np.random.default_rng(zlib.crc32(t.encode())).normal(size=8)
                out[i] = v / np.linalg.norm(v)
        return out


def test_counts_on_crafted_rows():
    f = compute_features(crafted())
    r0 = f.iloc[0]
    # response A (joined turns: TEXT_A + "\n\n" + "")
    assert r0["a_chars"] == len(TEXT_A) + 2 == 51
    assert r0["a_newlines"] == 6 + 2
    assert r0["a_words"] == 13
    assert r0["a_tokens"] == 27  # 9 \w+ runs + 18 punctuation characters
    assert (r0["a_headers"], r0["a_list_items"], r0["a_bold"], r0["a_code_blocks"]) == (1, 2, 1, 1)
    assert (r0["a_digits"], r0["a_urls"], r0["a_questions"], r0["a_refusals"]) == (2, 1, 1, 0)
    assert r0["a_turns"] == 2 and r0["p_turns"] == 2
    # response B: "sorry", "i cannot", "as an ai", "i can't"
    assert r0["b_refusals"] == 4
    assert r0["b_questions"] == 0 and r0["b_words"] == 12 + 1  # + "ok" on turn 2
    # prompt "What is 2+2?\n\nAnd 3+3?"
    assert (r0["p_questions"], r0["p_digits"], r0["p_newlines"], r0["p_words"]) == (2, 4, 2, 5)
    # differences and ratios
    assert r0["diff_chars"] == r0["a_chars"] - r0["b_chars"]
    assert r0["ratio_words"] == pytest.approx((13 + 1) / (13 + 1))
    assert r0["ratio_refusals"] == pytest.approx(1 / 5)
    # edge flags
    r1 = f.iloc[1]
    assert (r1["a_null"], r1["b_null"], r1["a_empty"], r1["b_empty"], r1["ab_both_empty"]) == (1, 0, 0, 1, 0)
    assert r1["a_chars"] == 1 and r1["b_chars"] == 2  # "" + "\n\n" + ""
    assert np.isnan(r1["sim_word_cos_ab"]) and np.isnan(r1["b_word_cos_prompt"])  # B has no words: undefined
    assert r1["sim_word_jaccard_ab"] == 0.0  # {x} vs {}
    assert f["ab_identical"].tolist() == [0, 0, 1, 0]
    # similarity: identical answers -> 1, disjoint vocabularies -> 0
    assert f.loc[2, "sim_word_cos_ab"] == pytest.approx(1.0) and f.loc[2, "sim_char_cos_ab"] == pytest.approx(1.0)
    assert f.loc[2, "sim_word_jaccard_ab"] == 1.0
    assert f.loc[3, "sim_word_cos_ab"] == pytest.approx(0.0) and f.loc[3, "sim_word_jaccard_ab"] == 0.0
    assert f.loc[3, "sim_char_cos_ab"] == pytest.approx(0.0)  # the two texts share no byte 4-gram
    assert not any(is_student_column(c) for c in f.columns)


def test_student_columns():
    df = crafted()
    orig = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    f = compute_features(df, student={"orig": orig, "swap": None})
    p = np.exp(orig) / np.exp(orig).sum(1, keepdims=True)
    np.testing.assert_allclose(f[["stu_orig_prob_a", "stu_orig_prob_b", "stu_orig_prob_tie"]].to_numpy(), p, rtol=1e-12)
    # swap=None substitutes orig: swap and average equal orig
    np.testing.assert_allclose(f["stu_swap_prob_a"], f["stu_orig_prob_a"])
    np.testing.assert_allclose(f["stu_avg_logp_b"], np.log(p[:, 1]), rtol=1e-12)
    np.testing.assert_allclose(f["diff_stu_avg_logp"], np.log(p[:, 0]) - np.log(p[:, 1]), rtol=1e-12)
    with pytest.raises(ValueError):
        compute_features(df, student={"orig": orig[:2], "swap": None})


@pytest.mark.parametrize("with_swap_logits", [True, False])
def test_swap_consistency(with_swap_logits):
    from arena_kd.data.readers import read_pairs

    df = pd.concat([crafted(), read_pairs(SAMPLE).head(60)], ignore_index=True)
    rng = np.random.default_rng(0)
    student = {"orig": rng.normal(size=(len(df), 3)),
               "swap": rng.normal(size=(len(df), 3)) if with_swap_logits else None}
    tfidf = fit_similarity(df)
    emb = HashEmbedder()
    feats = compute_features(df, student=student, embedder=emb, tfidf=tfidf)
    swapped = compute_features(swap_frame(df), student=swap_student(student), embedder=emb, tfidf=tfidf)
    assert {"sim_emb_cos_ab", "a_emb_cos_prompt", "stu_avg_prob_tie", "ratio_tokens"} <= set(feats.columns)
    pd.testing.assert_frame_equal(swapped, swap_features(feats), rtol=1e-12, atol=1e-12)
    # a swap twice is the identity; symmetric features unchanged, differences negated, A/B exchanged
    pd.testing.assert_frame_equal(swap_features(swap_features(feats)), feats, rtol=1e-12)
    s = swap_features(feats)
    np.testing.assert_array_equal(s["sim_char_cos_ab"], feats["sim_char_cos_ab"])
    np.testing.assert_array_equal(s["diff_chars"], -feats["diff_chars"])
    np.testing.assert_array_equal(s["a_chars"], feats["b_chars"])
    np.testing.assert_array_equal(s["stu_orig_prob_a"], feats["stu_swap_prob_b"])


def test_tfidf_fit_save_load_same_features(tmp_path):
    df = crafted()
    tfidf = fit_similarity(df, n_features=1000)
    assert tfidf.word.n_features == 1024  # rounded up to a power of two
    tfidf.save(tmp_path)
    loaded = SimilarityModel.load(tmp_path)
    pd.testing.assert_frame_equal(compute_features(df, tfidf=tfidf), compute_features(df, tfidf=loaded))
    # features of one row do not depend on the other rows once the IDF is fixed
    one = compute_features(df.iloc[[3]].reset_index(drop=True), tfidf=tfidf)
    pd.testing.assert_frame_equal(one, compute_features(df, tfidf=tfidf).iloc[[3]].reset_index(drop=True))


def test_chunking_and_threads_do_not_change_features(monkeypatch):
    import arena_kd.blend.features as F
    from arena_kd.data.readers import read_pairs

    df = read_pairs(SAMPLE).head(50)
    tfidf = fit_similarity(df)
    ref = compute_features(df, tfidf=tfidf, n_threads=1)
    monkeypatch.setattr(F, "CHUNK_ROWS", 7)
    pd.testing.assert_frame_equal(compute_features(df, tfidf=tfidf, n_threads=2), ref)


def _tiny_encoder(tmp_path):
    """(folder, model, tokenizer) of a 1-layer, 16-wide random BERT with a byte-level BPE tokenizer."""
    import torch
    from _data_fixtures import tiny_bpe
    from transformers import BertConfig, BertModel

    tok = tiny_bpe("bert")
    model_dir = tmp_path / "enc"
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64)).eval()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir, model, tok


def test_sentence_embedder_mean_pooling_and_cache(tmp_path, monkeypatch):
    import torch

    from arena_kd.blend.embeddings import SentenceEmbedder

    model_dir, model, tok = _tiny_encoder(tmp_path)

    import arena_kd.blend.embeddings as E

    monkeypatch.setattr(E, "SHARD_TEXTS", 1)  # one cache shard per text: resumable mid-way
    texts = ["hello world", "", "the sea is wide and blue", "hello world"]
    emb = SentenceEmbedder(str(model_dir), batch_size=2, max_length=32, cache_dir=tmp_path / "cache")
    v = emb.encode(texts)
    assert v.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(v[[0, 2, 3]], axis=1), 1.0, rtol=1e-5)
    assert not v[1].any()
    np.testing.assert_array_equal(v[0], v[3])
    with torch.inference_mode():  # mean pooling by hand, one text alone (no padding)
        enc = tok(["the sea is wide and blue"], return_tensors="pt", truncation=True, max_length=32)
        h = model(**enc).last_hidden_state.mean(1)[0]
    np.testing.assert_allclose(v[2], (h / h.norm()).numpy(), atol=1e-5)
    # a fresh embedder answers from the Parquet cache without loading the model
    again = SentenceEmbedder(str(model_dir), batch_size=2, max_length=32, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.encode(texts), v)
    assert again._model is None
    assert len(list((tmp_path / "cache").rglob("part-*.parquet"))) == 2  # two distinct non-empty texts


def test_missing_fields_and_parquet_arrays_are_handled():
    df = make_frame([
        {"id": "n0", "prompt": np.array(["hi there"], dtype=object), "response_a": None, "response_b": pd.NA,
         "label": 0},
        {"id": "n1", "prompt": ["hi"], "response_a": np.array(["yes", None], dtype=object), "response_b": ["no"],
         "label": 1},
    ])
    f = compute_features(df)
    assert f[["a_null", "b_null", "a_empty", "b_empty"]].iloc[0].tolist() == [1, 1, 1, 1]
    assert f.loc[0, "a_turns"] == 0 and f.loc[0, "p_words"] == 2
    assert (f.loc[1, "a_null"], f.loc[1, "a_turns"], f.loc[1, "a_chars"]) == (1, 2, 3)


@pytest.mark.gpu
def test_sentence_embedder_cuda_matches_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from arena_kd.blend.embeddings import SentenceEmbedder

    model_dir, _, _ = _tiny_encoder(tmp_path)
    texts = ["hello world", "the sea is wide and blue", "", "a dog"]
    cpu = SentenceEmbedder(str(model_dir), batch_size=3, max_length=32, device="cpu").encode(texts)
    gpu = SentenceEmbedder(str(model_dir), batch_size=3, max_length=32, device="cuda").encode(texts)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_markdown_line_patterns():
    from arena_kd.blend.features import text_stats
    from arena_kd.blend.text_bytes import ByteDocs

    texts = ["- a\n- b\n  * c\n1. x\n12) y\n\u2022 z\nnot-a-list\n1.5 no",
             "#no\n# yes\n   ## yes\n    # no\n####### no\ntext # no"]
    st = text_stats(texts, ByteDocs.from_texts(texts))
    assert st["list_items"].tolist() == [6, 0]
    assert st["headers"].tolist() == [0, 2]
