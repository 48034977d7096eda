"""arena_kd.blend.source_model: the source of a pair learned from its text (test rows carry none), swap-invariant,
cross-fitted for training rows, saved without pickle."""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_kd.blend.features import fit_similarity
from arena_kd.blend.source_model import SourceModel, fit_source_features
from arena_kd.data.readers import read_pairs
from arena_kd.data.schema import swap_frame


def _sample(n=300):
    df = read_pairs("data/sample/train.csv")
    df = pd.concat([df[df["source"] == "mtbench_human"].head(n // 2), df[df["source"] == "hh_harmless"].head(n // 2)],
                   ignore_index=True)
    return df


def test_source_features_learn_the_source_and_are_swap_invariant(tmp_path):
    df = _sample()
    tfidf = fit_similarity(df, n_features=4096)
    folds = np.arange(len(df)) % 2
    feats, model = fit_source_features(df, folds, tfidf, seed=0)
    assert list(feats.columns) == ["src_prob_hh_harmless", "src_prob_mtbench_human"]
    np.testing.assert_allclose(feats.sum(axis=1), 1.0)
    truth = (df["source"] == "mtbench_human").to_numpy()
    assert ((feats["src_prob_mtbench_human"] > 0.5).to_numpy() == truth).mean() > 0.9  # out of fold
    test = df.head(40)
    p = model.features(test, tfidf)
    np.testing.assert_allclose(model.features(swap_frame(test), tfidf), p, atol=1e-12)
    model.save(tmp_path)
    np.testing.assert_allclose(SourceModel.load(tmp_path).features(test, tfidf), p, atol=1e-12)


def test_one_source_trains_nothing():
    df = _sample(40)
    df["source"] = "train"
    assert fit_source_features(df, np.arange(len(df)) % 2, fit_similarity(df, n_features=1024), seed=0) is None


def test_word_design_from_the_features_is_the_source_models_input(monkeypatch):
    """features_and_words hands the source model the word TF-IDF it already computed: the same matrix as design()
    in one chunk, equal to rounding over several (the L2 norms are taken per chunk)."""
    import arena_kd.blend.features as features
    from arena_kd.blend.source_model import design

    df = _sample(60)
    tfidf = fit_similarity(df, n_features=4096)
    want = design(df, tfidf)
    feats, words = features.features_and_words(df, tfidf=tfidf)
    assert (words != want).nnz == 0 and feats.equals(features.compute_features(df, tfidf=tfidf))
    monkeypatch.setattr(features, "_chunks", lambda n: (slice(s, min(s + 16, n)) for s in range(0, n, 16)))
    _, chunked = features.features_and_words(df, tfidf=tfidf)
    np.testing.assert_allclose(chunked.toarray(), want.toarray(), rtol=0, atol=1e-12)
