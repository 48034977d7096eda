"""Read back the fitted models of a stacker folder (``stacker.json`` ``models``) and check every parameter before a
model may answer.

A stacker folder is read on another machine (the Kaggle artifacts dataset) long after it was fitted; a hand edit, a
bad copy or tampering must not turn into confident wrong answers (a negative temperature flips every answer: issue 22).
Each model is checked on its own; one that fails is *not used* and the reason is kept (``Stacker.unusable``, logged,
and written to the submission's run.json) while the others still answer (:meth:`arena_kd.blend.stacker.Stacker.chosen`
routes its rows to the best remaining candidate by out-of-fold log loss). Checks:

- ``kind`` one of lightgbm / student_only / prior / log_pool; ``features`` a list of names; ``student_input`` tta /
  single / none;
- ``temperature`` finite and inside the range the stage fits it in (``blend.temperature.T_MIN``..``T_MAX``);
- a prior's ``probs``: three finite probabilities > 0 summing to 1;
- a LightGBM ``model_file``: a relative path that stays inside the folder (no ``..``, no absolute path, no link out),
  a readable booster with 3 classes and exactly the recorded number of features;
- a log pool's ``members``: names of other models of the folder that are themselves usable and not pools, one finite
  ``weights`` entry in [0, W_MAX] per member and a finite ``tie_offset`` within ±TIE_OFFSET_MAX
  (:mod:`arena_kd.blend.log_pool`); a pool whose member is not usable is not usable either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arena_kd.blend.booster import load_booster
from arena_kd.blend.log_pool import TIE_OFFSET_MAX, W_MAX
from arena_kd.blend.temperature import T_MAX, T_MIN

LIGHTGBM, STUDENT_ONLY, PRIOR, LOG_POOL = "lightgbm", "student_only", "prior", "log_pool"
KINDS = (LIGHTGBM, STUDENT_ONLY, PRIOR, LOG_POOL)
STUDENT_INPUTS = (None, "tta", "single")


class SpecError(ValueError):
    """A fitted model's parameters are out of range: the model is not used."""


@dataclass
class FittedModel:
    kind: str  # one of KINDS
    features: list[str]
    temperature: float
    booster: object | None
    student_input: str | None = None  # "tta" / "single": which student columns the model was trained on
    probs: np.ndarray | None = None  # kind PRIOR: the constant answer
    members: list[str] | None = None  # kind LOG_POOL: the pooled models' names, weights [k] and the tie offset
    weights: np.ndarray | None = None
    tie_offset: float = 0.0


def _temperature(value) -> float:
    # the fit searches [T_MIN, T_MAX] and also tries T = 1 (blend.temperature); relative slack for float round trips
    return _bounded(value, "temperature", T_MIN, T_MAX, slack=1e-9)


def model_file_inside(stack_dir: Path, rel) -> Path:
    """``stack_dir / rel`` when ``rel`` is a relative path to a file inside ``stack_dir`` (links resolved); SpecError
    otherwise."""
    if not isinstance(rel, str) or not rel.strip():
        raise SpecError(f"model_file {rel!r} is not a file name")
    base = Path(stack_dir).resolve()
    path = (base / rel).resolve()
    if Path(rel).is_absolute() or not path.is_relative_to(base):
        raise SpecError(f"model_file {rel!r} leaves the stacker folder")
    if not path.is_file():
        raise SpecError(f"model file {rel} missing (rerun `arena-kd stack --force`)")
    return path


def _prior_probs(value) -> np.ndarray:
    try:
        p = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError(f"prior probs {value!r} are not numbers") from None
    if p.shape != (3,) or not np.isfinite(p).all() or (p <= 0).any() or abs(p.sum() - 1.0) > 1e-6:
        raise SpecError(f"prior probs {value!r} are not three probabilities > 0 summing to 1")
    return p


def _bounded(value, what: str, lo: float, hi: float, slack: float = 0.0) -> float:
    """``value`` as a finite float inside the range its fit searches, [lo, hi] widened by ``slack`` (relative);
    SpecError otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(v) or not (lo - slack * abs(lo) <= v <= hi + slack * abs(hi)):
        raise SpecError(f"{what} {value!r} outside the fitted range [{lo:g}, {hi:g}]")
    return v


def _pool(spec: dict) -> tuple[list[str], np.ndarray, float]:
    members, weights = spec.get("members"), spec.get("weights")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise SpecError("log pool members is not a list of model names")
    if not isinstance(weights, list) or len(weights) != len(members):
        raise SpecError(f"log pool has {len(members)} members and {weights!r} as weights")
    w = np.array([_bounded(x, "log pool weight", 0.0, W_MAX) for x in weights])
    return list(members), w, _bounded(spec.get("tie_offset"), "log pool tie_offset", -TIE_OFFSET_MAX, TIE_OFFSET_MAX)


def _booster(stack_dir: Path, spec: dict, n_features: int):
    path = model_file_inside(stack_dir, spec.get("model_file"))
    try:
        booster = load_booster(path)
    except Exception as exc:  # noqa: BLE001 - LightGBM raises its own error type for a damaged file
        raise SpecError(f"model file {path.name} unreadable ({type(exc).__name__})") from None
    if booster.num_model_per_iteration() != 3:
        raise SpecError(f"model file {path.name} has {booster.num_model_per_iteration()} classes, not 3")
    if booster.num_feature() != n_features:
        raise SpecError(f"model file {path.name} takes {booster.num_feature()} features, stacker.json lists "
                        f"{n_features}")
    return booster


def read_model(stack_dir: Path, spec) -> FittedModel:
    """One ``stacker.json`` model spec, checked (module doc); SpecError says what is out of range."""
    if not isinstance(spec, dict):
        raise SpecError(f"spec is a {type(spec).__name__}, not an object")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise SpecError(f"unknown kind {kind!r}")
    features = spec.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise SpecError("features is not a list of names")
    student_input = spec.get("student_input")
    if student_input not in STUDENT_INPUTS:
        raise SpecError(f"unknown student_input {student_input!r}")
    temperature = _temperature(spec.get("temperature"))
    probs = _prior_probs(spec.get("probs")) if kind == PRIOR else None
    booster = _booster(stack_dir, spec, len(features)) if kind == LIGHTGBM else None
    members, weights, tie_offset = _pool(spec) if kind == LOG_POOL else (None, None, 0.0)
    return FittedModel(kind=kind, features=list(features), temperature=temperature, booster=booster,
                       student_input=student_input, probs=probs, members=members, weights=weights,
                       tie_offset=tie_offset)


def read_models(stack_dir: Path, specs) -> tuple[dict[str, FittedModel | None], dict[str, str]]:
    """(models by name — None for a model the stage did not train or one that failed its checks, reasons by name of
    the ones that failed)."""
    models: dict[str, FittedModel | None] = {}
    unusable: dict[str, str] = {}
    for name, spec in (specs if isinstance(specs, dict) else {}).items():
        if spec is None:
            models[name] = None
            continue
        try:
            models[name] = read_model(stack_dir, spec)
        except SpecError as exc:
            models[name] = None
            unusable[name] = str(exc)
    for name, model in models.items():  # a pool answers only through its members: each must be usable, none a pool
        bad = [] if model is None or model.kind != LOG_POOL else [
            m for m in model.members if models.get(m) is None or models[m].kind == LOG_POOL]
        if bad:
            models[name] = None
            unusable[name] = f"log pool member {bad[0]!r} is not a usable model of this folder" + (
                f" ({unusable[bad[0]]})" if bad[0] in unusable else "")
    return models, unusable
