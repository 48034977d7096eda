"""Load a trained stacker folder and predict calibrated, position-symmetric probabilities for new pairs.

    stacker = load_stacker(workdir / "stacking")
    probs = stacker.predict(test_df, {"orig": logits, "swap": swapped_logits})   # float64[n, 3]
    probs = stacker.predict_features_only(test_df)                                 # fallback without the student

``stacker.json`` (written by :func:`stacking.run.run_stacking`) names the models, their feature lists and
temperatures; the fitted TF-IDF lives in ``tfidf.json`` + ``tfidf_idf.parquet``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.errors import UserError
from stacking.calibration import apply_temperature
from stacking.features import compute_features, student_probs
from stacking.model import load_booster, predict_symmetric
from stacking.similarity import SimilarityModel

log = logging.getLogger(__name__)
MANIFEST = "stacker.json"
STUDENT_ONLY = "student_only"


@dataclass
class _Model:
    kind: str  # "lightgbm" or "student_only"
    features: list[str]
    temperature: float
    booster: object | None


class Stacker:
    """A trained stacker: ``predict(df, student)`` and ``predict_features_only(df)`` -> float64[n, 3] probabilities."""

    def __init__(self, stack_dir: Path, manifest: dict, models: dict[str, _Model | None], tfidf: SimilarityModel, embedder=None):
        self.stack_dir = stack_dir
        self.manifest = manifest
        self.models = models
        self.tfidf = tfidf
        self.embedder = embedder

    @property
    def has_student_model(self) -> bool:
        return self.models.get("stacker") is not None

    def features(self, df: pd.DataFrame, student: dict | None = None) -> pd.DataFrame:
        """The feature table exactly as at training time (same TF-IDF fit and embedding model)."""
        return compute_features(df, student=student, embedder=self.embedder, tfidf=self.tfidf)

    def predict_from_features(self, feats: pd.DataFrame, which: str, student: dict | None = None, calibrate: bool = True) -> np.ndarray:
        """Probabilities float64[n,3] of model ``which`` ('stacker' or 'features_only') on a feature table;
        ``calibrate=False`` skips the temperature (for reports)."""
        model = self.models.get(which)
        if model is None:
            raise UserError(f"{self.stack_dir / MANIFEST}: no '{which}' model in this stacker folder")
        if model.kind == STUDENT_ONLY:
            if student is None:
                raise UserError(f"{self.stack_dir / MANIFEST}: the '{which}' model calibrates the student and needs its logits")
            raw = student_probs(student)
        else:
            missing = [c for c in model.features if c not in feats.columns]
            if missing:
                raise UserError(f"{self.stack_dir / MANIFEST}: feature(s) {', '.join(missing[:5])} missing at prediction time")
            raw = predict_symmetric(model.booster, feats[model.features])
        return apply_temperature(raw, model.temperature) if calibrate else raw

    def predict(self, df: pd.DataFrame, student: dict | None = None, *, calibrate: bool = True) -> np.ndarray:
        """float64[n,3] (A wins, B wins, tie): the student stacker when ``student`` is given, else the features-only one."""
        if student is None or not self.has_student_model:
            if student is not None:
                log.warning("%s has no student stacker (trained without student OOF); using the features-only model", self.stack_dir)
            return self.predict_features_only(df, calibrate=calibrate)
        return self.predict_from_features(self.features(df, student), "stacker", student, calibrate=calibrate)

    def predict_features_only(self, df: pd.DataFrame, *, calibrate: bool = True) -> np.ndarray:
        """float64[n,3] from length/structure/similarity features alone (no student logits needed)."""
        return self.predict_from_features(self.features(df, None), "features_only", calibrate=calibrate)


def load_stacker(stack_dir: str | Path, *, embedding_model: str | None = None, embedding_cache_dir: str | Path | None = None, device: str | None = None) -> Stacker:
    """Load ``<workdir>/stacking``. ``embedding_model`` overrides the trained one's path (same model, other location).

    Embeddings are always cached in memory for the Stacker's lifetime; ``embedding_cache_dir`` also keeps them on disk
    (None by default, so a read-only artifacts folder works)."""
    d = Path(stack_dir)
    path = d / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: stacker not found (run `arena-kd stack` first)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: unreadable stacker manifest ({exc.msg})") from None
    models: dict[str, _Model | None] = {}
    for name in ("stacker", "features_only"):
        spec = manifest.get("models", {}).get(name)
        if spec is None:
            models[name] = None
            continue
        booster = None
        if spec["kind"] != STUDENT_ONLY:
            model_file = d / spec["model_file"]
            if not model_file.is_file():
                raise UserError(f"{model_file}: model file missing (rerun `arena-kd stack --force`)")
            booster = load_booster(model_file)
        models[name] = _Model(kind=spec["kind"], features=list(spec["features"]), temperature=float(spec["temperature"]), booster=booster)
    tfidf = SimilarityModel.load(d)
    embedder = None
    emb = manifest.get("embedding")
    if emb:
        from stacking.embeddings import SentenceEmbedder

        embedder = SentenceEmbedder(embedding_model or emb["model"], batch_size=emb.get("batch_size", 64), max_length=emb["max_length"], cache_dir=embedding_cache_dir, device=device)
    return Stacker(d, manifest, models, tfidf, embedder)
