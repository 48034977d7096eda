"""Where does a pair come from? A text classifier whose probabilities become stacker features.

Real training sets mix sources (Kaggle arena rows, MT-Bench expert judgments, chosen/rejected sets without ties) and
the label mix differs by source — HH-RLHF has no ties, MT-Bench ~21% — but test rows carry no source. This model
learns the source from the text itself: a multinomial logistic regression (scikit-learn) on the hashed word TF-IDF
(:mod:`arena_kd.blend.similarity`, the stacker's own fitted space) of prompt + response A + response B, a representation
that is unchanged by an A/B swap, so the features (``src_prob_<source>``) are swap-invariant like every ``p_*``
feature. The stacker can then learn a per-source label mix with one split instead of rediscovering the source
from length statistics.

Training rows get cross-fitted probabilities (fold k from a model fitted on the other folds: an honest input for
the stacker's CV); test rows get the model fitted on every row, saved as JSON + Parquet (no pickle). Only trained
when the training rows have at least two sources.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from arena_kd.blend.similarity import SimilarityModel
from arena_kd.blend.text_bytes import ByteDocs, truncated
from arena_kd.common.io import atomic_write_json, atomic_write_parquet
from arena_kd.common.metrics import softmax

MODEL_JSON = "source_model.json"
COEF_PARQUET = "source_model_coef.parquet"
PREFIX = "src_prob_"
C = 1.0  # inverse L2 strength: sklearn's default; the TF-IDF rows are unit-norm sums, so no feature scaling is needed


def feature_name(source: str) -> str:
    return PREFIX + re.sub(r"[^0-9A-Za-z]+", "_", str(source)).strip("_").lower()


def design(df: pd.DataFrame, tfidf: SimilarityModel) -> sp.csr_matrix:
    """CSR [n, buckets]: word TF-IDF of the prompt + response A + response B (swap-invariant)."""
    from arena_kd.blend.features import field_texts

    texts = field_texts(df)
    mats = [tfidf.word.transform(truncated(ByteDocs.from_texts(texts[f]), tfidf.max_bytes)) for f in ("p", "a", "b")]
    return (mats[0] + mats[1] + mats[2]).tocsr()


def _fit(x: sp.csr_matrix, y: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=300, random_state=seed).fit(x, y)


def _proba(model, x: sp.csr_matrix, classes: list[str]) -> np.ndarray:
    p = model.predict_proba(x)
    out = np.zeros((x.shape[0], len(classes)))
    for j, c in enumerate(model.classes_):
        out[:, classes.index(c)] = p[:, j]
    return out


class SourceModel:
    """Saved logistic regression: coef [n_classes or 1, buckets] (sparse rows), intercept, classes."""

    def __init__(self, classes: list[str], coef: np.ndarray, intercept: np.ndarray):
        self.classes = list(classes)
        self.coef, self.intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)

    @property
    def columns(self) -> list[str]:
        return [feature_name(c) for c in self.classes]

    def predict_proba(self, x: sp.csr_matrix) -> np.ndarray:
        z = np.asarray(x @ self.coef.T) + self.intercept
        if len(self.classes) == 2:  # sklearn's binary form: one logit for classes[1]
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        return softmax(z, axis=1)

    def features(self, df: pd.DataFrame, tfidf: SimilarityModel, words: sp.csr_matrix | None = None) -> pd.DataFrame:
        """``words``: :func:`design` of ``df`` when the caller has it (blend.features.features_and_words)."""
        if not len(df):
            return pd.DataFrame(np.zeros((0, len(self.classes))), columns=self.columns)
        p = self.predict_proba(design(df, tfidf) if words is None else words)
        return pd.DataFrame(p, columns=self.columns)

    def save(self, out_dir: Path) -> list[str]:
        nz = np.flatnonzero(np.any(self.coef != 0, axis=0))
        rows = {f"coef{r}": self.coef[r, nz] for r in range(self.coef.shape[0])}
        table = pd.DataFrame({"bucket": nz.astype(np.int64), **rows})
        atomic_write_parquet(Path(out_dir) / COEF_PARQUET, table)
        atomic_write_json(Path(out_dir) / MODEL_JSON, {"classes": self.classes, "intercept": self.intercept.tolist(),
                                                       "buckets": int(self.coef.shape[1]),
                                                       "rows": int(self.coef.shape[0]), "C": C})
        return [MODEL_JSON, COEF_PARQUET]

    @classmethod
    def load(cls, out_dir: Path) -> "SourceModel":
        meta = json.loads((Path(out_dir) / MODEL_JSON).read_text())
        table = pd.read_parquet(Path(out_dir) / COEF_PARQUET)
        coef = np.zeros((meta["rows"], meta["buckets"]))
        for r in range(meta["rows"]):
            coef[r, table["bucket"].to_numpy()] = table[f"coef{r}"].to_numpy()
        return cls(meta["classes"], coef, np.asarray(meta["intercept"]))


def fit_source_features(df: pd.DataFrame, folds: np.ndarray, tfidf: SimilarityModel, seed: int,
                        words: sp.csr_matrix | None = None) -> tuple[pd.DataFrame, SourceModel] | None:
    """(cross-fitted training features, the model fitted on every row), or None for fewer than two sources.
    ``words``: :func:`design` of ``df`` when the caller has it."""
    y = df["source"].astype(str).to_numpy()
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        return None
    x = design(df, tfidf) if words is None else words
    oof = np.zeros((len(df), len(classes)))
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        if len(set(y[tr].tolist())) < 2:  # one source only outside this fold: the fold learns nothing about sources
            oof[va] = np.array([np.mean(y[tr] == c) for c in classes])
            continue
        oof[va] = _proba(_fit(x[tr], y[tr], seed), x[va], classes)
    full = _fit(x, y, seed)
    model = SourceModel([str(c) for c in full.classes_], full.coef_, full.intercept_)
    feats = pd.DataFrame(oof[:, [classes.index(c) for c in model.classes]], columns=model.columns)
    return feats, model
