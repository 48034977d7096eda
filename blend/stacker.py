"""Load a trained stacker folder and predict calibrated, position-symmetric probabilities for new pairs.

    stacker = load_stacker(workdir / "stacking")
    probs = stacker.predict(test_df, {"orig": logits, "swap": swapped_logits})   # float64[n, 3], TTA rows
    probs = stacker.predict(test_df, {"orig": logits, "swap": None})             # rows without TTA
    probs = stacker.predict(test_df, {"orig": o, "swap": s, "max_length": lens})  # per-row student max length
    probs = stacker.predict_features_only(test_df)                                 # rows without a student

Routing (the model each row gets; ``stacker.json`` ``selection``, chosen by out-of-fold log loss in
:mod:`stacking.candidates`): a row with both orientations → the ``tta`` winner; one orientation → the ``single``
winner (trained on student columns built from one orientation, exactly as here); no student → the ``none``
winner; a row whose student ``max_length`` is below the length the student OOF was predicted at
(``student_max_length``) → the ``short`` winner, which is the ``none`` winner: no stacker was trained on truncated
student logits, so those rows are answered from their text alone. ``mode=`` forces one of these for every row.
Every fitted model is checked when it is read back (:mod:`arena_kd.blend.stacker_spec`: temperature range, prior
probabilities, a model file inside the folder, ...); a model that fails is not used (``unusable``: name → reason) and
its rows go to the best remaining candidate of their mode by out-of-fold log loss (``stacker.json`` ``candidates``;
the prior is always one).
``stacker.json`` (written by :func:`stacking.run.run_stacking`) names the models, their feature lists and
temperatures; the fitted TF-IDF lives in ``tfidf.json`` + ``tfidf_idf.parquet``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.blend.booster import predict_symmetric
from arena_kd.blend.features import features_and_words, is_student_column, student_features, student_probs
from arena_kd.blend.log_pool import pool_probs
from arena_kd.blend.similarity import SimilarityModel
from arena_kd.blend.stacker_spec import LOG_POOL, PRIOR, STUDENT_ONLY, FittedModel, read_models
from arena_kd.blend.temperature import apply_temperature
from arena_kd.common.errors import UserError

log = logging.getLogger(__name__)
MANIFEST = "stacker.json"
MODES = ("tta", "single", "short", "none")
__all__ = ["LOG_POOL", "MANIFEST", "MODES", "PRIOR", "STUDENT_ONLY", "Stacker", "load_stacker"]


class Stacker:
    """A trained stacker folder: ``predict(df, student)`` and ``predict_features_only(df)`` -> float64[n, 3]."""

    def __init__(self, stack_dir: Path, manifest: dict, models: dict[str, FittedModel | None],
                 tfidf: SimilarityModel, embedder=None, unusable: dict[str, str] | None = None):
        self.stack_dir = stack_dir
        self.manifest = manifest
        self.models = models
        self.unusable = dict(unusable or {})  # name -> why the model failed its read-back checks (not used)
        self.tfidf = tfidf
        self.embedder = embedder
        self.source_model = None
        if manifest.get("source_model"):
            from arena_kd.blend.source_model import SourceModel

            self.source_model = SourceModel.load(stack_dir)
        self.selection = dict(manifest.get("selection") or {})
        if not self.selection:  # a version-1 folder: the full stacker and the features-only fallback
            self.selection = {"tta": "stacker", "single": "stacker", "short": "stacker", "none": "features_only"}

    def ranked(self, mode: str) -> list[str]:
        """Model names that may answer rows of student ``mode``, best first: the selected one, then the mode's other
        candidates by out-of-fold log loss (``candidates``; 'short' rows are the 'none' table's), then the older
        folders' chain (tta → single → none)."""
        names = [self.selection.get(mode)]
        rows = (self.manifest.get("candidates") or {}).get("none" if mode == "short" else mode) or []

        def loss(row: dict) -> float:
            v = row.get("log_loss")
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf

        names += [r.get("name") for r in sorted((r for r in rows if isinstance(r, dict)), key=loss)]
        if mode == "tta":  # trained without TTA: both orientations still make a one-orientation input
            names.append(self.selection.get("single"))
        names.append(self.selection.get("none", "features_only"))
        return [n for n in dict.fromkeys(names) if isinstance(n, str)]

    def chosen(self, mode: str) -> str:
        """Name of the model answering rows of student ``mode`` (tta | single | short | none): the first usable one
        of :meth:`ranked`."""
        if mode not in MODES:
            raise UserError(f"{self.stack_dir / MANIFEST}: unknown student mode {mode!r} "
                            f"(expected one of {', '.join(MODES)})")
        for name in self.ranked(mode):
            if self.models.get(name) is not None:
                return name
        raise UserError(f"{self.stack_dir / MANIFEST}: no usable model for student mode '{mode}' "
                        f"({'; '.join(f'{k}: {v}' for k, v in self.unusable.items()) or 'none trained'})")

    def features(self, df: pd.DataFrame, student: dict | None = None) -> pd.DataFrame:
        """The feature table exactly as at training time (same TF-IDF fit, embedding model and source classifier)."""
        feats, words = features_and_words(df, student, self.embedder, self.tfidf)
        if self.source_model is not None:
            feats = pd.concat([feats, self.source_model.features(df, self.tfidf, words)], axis=1)
        return feats

    def predict_model(self, df: pd.DataFrame, which: str, student: dict | None = None, *, calibrate: bool = True,
                      feats: pd.DataFrame | None = None) -> np.ndarray:
        """Probabilities float64[n,3] of one named model (any candidate in stacker.json); ``calibrate=False`` skips the
        temperature (for reports). A model trained on one-orientation student columns gets them built from ``orig``
        only. A log pool pools its members' probabilities before their temperatures (as it was fitted)."""
        model = self.models.get(which)
        if model is None:
            raise UserError(f"{self.stack_dir / MANIFEST}: no '{which}' model in this stacker folder")
        stud = student
        if stud is not None and model.student_input == "single":
            stud = {"orig": stud["orig"], "swap": None}
        if model.kind == PRIOR:
            raw = np.tile(model.probs, (len(df), 1))
        elif model.kind == STUDENT_ONLY:
            if stud is None:
                raise UserError(f"{self.stack_dir / MANIFEST}: the '{which}' model calibrates the student and needs "
                                "its logits")
            raw = student_probs(stud)
        elif model.kind == LOG_POOL:
            parts = [self.predict_model(df, m, student, calibrate=False, feats=feats) for m in model.members]
            raw = pool_probs(parts, model.weights, model.tie_offset)
        else:
            if feats is None:
                feats = self.features(df, None)
            if any(is_student_column(c) for c in model.features):
                if stud is None:
                    raise UserError(f"{self.stack_dir / MANIFEST}: the '{which}' model needs the student's logits")
                orig = np.asarray(stud["orig"], dtype=np.float64)
                swap = None if stud.get("swap") is None else np.asarray(stud["swap"], dtype=np.float64)
                feats = pd.concat([feats, pd.DataFrame(student_features(orig, swap))], axis=1)
            missing = [c for c in model.features if c not in feats.columns]
            if missing:
                raise UserError(f"{self.stack_dir / MANIFEST}: feature(s) {', '.join(missing[:5])} missing at "
                                "prediction time")
            raw = predict_symmetric(model.booster, feats[model.features])
        return apply_temperature(raw, model.temperature) if calibrate else raw

    def row_modes(self, n: int, student: dict | None, mode: str | None = None) -> np.ndarray:
        """object[n]: the student mode of every row (see module doc)."""
        if mode is not None:
            return np.full(n, mode, dtype=object)
        if student is None:
            return np.full(n, "none", dtype=object)
        modes = np.full(n, "tta" if student.get("swap") is not None else "single", dtype=object)
        lens, trained = student.get("max_length"), self.manifest.get("student_max_length")
        if lens is not None and trained:
            lens = np.broadcast_to(np.asarray(lens), (n,))
            modes[(lens < int(trained)) & (lens > 0)] = "short"
        return modes

    def predict(self, df: pd.DataFrame, student: dict | None = None, *, mode: str | None = None,
                calibrate: bool = True, feats: pd.DataFrame | None = None) -> np.ndarray:
        """float64[n,3] (A wins, B wins, tie): each row from the model selected for its student mode (module doc).

        ``student``: {"orig": [n,3], "swap": [n,3] | None, "max_length": int | int[n] (optional)} or None.
        ``feats``: ``self.features(df)`` when the caller has it already."""
        n = len(df)
        modes = self.row_modes(n, student, mode)
        out = np.zeros((n, 3))
        for m in dict.fromkeys(modes):
            sel = np.flatnonzero(modes == m)
            name = self.chosen(m)
            model = self.models[name]
            sub = df if len(sel) == n else df.iloc[sel].reset_index(drop=True)
            stud = None
            if student is not None and model.kind != PRIOR:
                stud = {k: (None if student.get(k) is None else np.asarray(student[k])[sel]) for k in ("orig", "swap")}
            # the caller's features serve only a model answering every row (predict_model builds them otherwise)
            out[sel] = self.predict_model(sub, name, stud, calibrate=calibrate, feats=feats if len(sel) == n else None)
        return out

    def predict_features_only(self, df: pd.DataFrame, *, calibrate: bool = True) -> np.ndarray:
        """float64[n,3] for rows without a student: the model selected for mode 'none'."""
        return self.predict(df, None, mode="none", calibrate=calibrate)


def load_stacker(stack_dir: str | Path, *, embedding_model: str | None = None,
                 embedding_cache_dir: str | Path | None = None, device: str | None = None) -> Stacker:
    """Load ``<workdir>/stacking``. ``embedding_model`` overrides the trained one's path (same model, other location).

    Embeddings are always cached in memory for the Stacker's lifetime; ``embedding_cache_dir`` also keeps them on disk
    (None by default, so a read-only artifacts folder works)."""
    d = Path(stack_dir)
    path = d / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: stacker not found (run `arena-kd stack` first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable stacker manifest ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: unreadable stacker manifest (a JSON {type(manifest).__name__}, not an object)")
    models, unusable = read_models(d, manifest.get("models"))
    for name, why in unusable.items():
        log.error("%s: model '%s' not used: %s", path, name, why)
    if not any(m is not None for m in models.values()):
        raise UserError(f"{path}: no usable model ({'; '.join(f'{k}: {v}' for k, v in unusable.items()) or 'none'})")
    tfidf = SimilarityModel.load(d)
    embedder = None
    emb = manifest.get("embedding")
    if emb:
        from arena_kd.blend.embeddings import SentenceEmbedder

        embedder = SentenceEmbedder(embedding_model or emb["model"], batch_size=emb.get("batch_size", 64),
                                    max_length=emb["max_length"], cache_dir=embedding_cache_dir, device=device)
    return Stacker(d, manifest, models, tfidf, embedder, unusable)
