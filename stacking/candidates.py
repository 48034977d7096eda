"""What the submission may answer with, and the choice between those candidates by out-of-fold log loss.

Candidates per student mode (the kind of student input a test row comes with):

  tta     stacker (all features + the student's logits in both orientations), log_pool (features_only's and the
          student's probabilities pooled log-linearly: blend.log_pool), features_only, student (TTA probabilities +
          temperature), length_only, prior
  single  stacker_single (student columns computed from the original orientation only, exactly as a test row
          without TTA gives them), log_pool_single, features_only, student_single, length_only, prior
  none    features_only, length_only, prior (rows the student never reached)

Every candidate's OOF is honest: LightGBM models are cross-validated (:func:`arena_kd.blend.booster.train_cv`), the
prior of fold k is the label mix of the other folds, and the temperature applied to fold k is fitted on the other folds
(:func:`cross_fitted_temperature`) — fitting it on the rows it is then scored on would flatter every candidate; the
log pool's weights likewise (:func:`arena_kd.blend.log_pool.cross_fitted_pool`, over its members' honest OOF).
The winner of each mode (``stacking.select_rule``): ``lowest`` takes the candidate with the lowest OOF log loss over
every stacker row (OOF and held-out); ``resolved`` (default) keeps the features-only stacker unless a candidate beats it
out of fold with a paired 95% interval wholly below zero, and then takes the lowest such candidate. Why: an
unresolved OOF lead does not carry to unseen questions. Measured on the demo (README "Threads, the alpha sweep and
the selection rule"): at α = 0.9 and 1.0 the student with a temperature led the features-only stacker out of fold
by 0.005 and 0.004 (intervals across zero), was selected by ``lowest``, and lost to it on the test split by 0.088 and
0.096.

Rows a test-time student saw at a shorter max length than its OOF was predicted at ("short") were never seen by a
stacker in training; they are routed to the ``none`` winner (which needs no student and was trained on exactly
what such a row has: its text) — the documented rule of :meth:`arena_kd.blend.stacker.Stacker.predict`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_kd.blend.booster import early_stopped_rounds, predict_symmetric, train_full
from arena_kd.blend.features import compute_features, fit_similarity
from arena_kd.blend.temperature import apply_temperature, fit_temperature
from arena_kd.common.config_stages import StackingConfig
from arena_kd.common.metrics import log_loss, log_loss_difference, log_loss_interval, pooled_prior, verdict
from arena_kd.data.folds import prompt_groups

MODES = ("tta", "single", "none")
SELECT_REFERENCE = "features_only"
"""The candidate ``select_rule: resolved`` keeps unless another one beats it out of fold with a resolved interval: it
needs no student (so no student-side leakage or train/test model mismatch can flatter it) and uses every feature."""
LENGTH_FEATURES = (
    "p_chars", "p_words",
    "a_chars", "b_chars", "diff_chars", "ratio_chars",
    "a_words", "b_words", "diff_words", "ratio_words",
    "a_tokens", "b_tokens", "diff_tokens", "ratio_tokens",
    "a_newlines", "b_newlines", "diff_newlines", "ratio_newlines",
)
"""The length-only model's columns (lengths of prompt and answers, their differences and ratios): 'the longer
answer wins' plus how long the question is — the baseline every richer model must beat."""


def length_columns(features: pd.DataFrame) -> pd.DataFrame:
    """The length-only model's input: the LENGTH_FEATURES columns of a feature table (blend.features)."""
    return features[[c for c in LENGTH_FEATURES if c in features.columns]]


def length_only_probs(train: pd.DataFrame, test: pd.DataFrame, cfg: StackingConfig, seed: int) -> np.ndarray:
    """float64[n,3] for ``test``: the length-only candidate fitted on every labelled row of ``train`` (rounds
    early-stopped on an inner prompt split, as each CV fold does), position-symmetric. For reports without a trained
    stacker folder; the stacking stage trains the same model cross-validated."""
    tfidf = fit_similarity(train, seed=seed)  # compute_features needs one; the length columns do not depend on it
    x = length_columns(compute_features(train, tfidf=tfidf))
    y = train["label"].to_numpy(dtype=np.int64)
    rounds = early_stopped_rounds(x, y, prompt_groups(train), cfg, seed)
    booster = train_full(x, y, cfg, seed, rounds)
    return predict_symmetric(booster, length_columns(compute_features(test, tfidf=tfidf)))


def candidate_names(mode: str) -> list[str]:
    """Candidates of one student mode, most complex first (ties in log loss go to the earlier one)."""
    if mode == "none":
        return ["features_only", "length_only", "prior"]
    suffix = "" if mode == "tta" else "_single"
    return [f"stacker{suffix}", f"log_pool{suffix}", "features_only", f"student{suffix}", "length_only", "prior"]


STUDENT_STACKERS = ("stacker", "log_pool")
"""The TTA candidates that combine the text features with the student: goal (c) of the report asks whether the better
of them (out of fold) beats the features-only stacker."""


def best_student_stacker(oof_log_loss: dict[str, float | None]) -> str | None:
    """Goal (c)'s candidate: the one of STUDENT_STACKERS with a number in ``oof_log_loss`` (out-of-fold log loss per
    candidate, as stacker.json's candidate table or stacking/oof.parquet gives it) and the lowest one; ties go to the
    earlier; None when neither has one. Chosen on the training rows, never on the test rows."""
    have = [n for n in STUDENT_STACKERS if isinstance(oof_log_loss.get(n), (int, float))]
    return min(have, key=lambda n: oof_log_loss[n]) if have else None


def pool_members(mode: str) -> list[str]:
    """The log pool's members in student ``mode`` (tta | single): the features-only booster first (the pool starts
    from it), then the student of that mode."""
    return ["features_only", "student" + ("" if mode == "tta" else "_single")]


def fold_pooled_prior(labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """float64[n,3]: each row gets the pooled prior of the other folds."""
    y = np.asarray(labels, dtype=np.int64)
    out = np.empty((len(y), 3))
    for k in np.unique(folds):
        rest = y[folds != k] if (folds != k).any() else y
        out[folds == k] = pooled_prior(rest)
    return out


def cross_fitted_temperature(raw: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """float64[n,3]: fold k's raw OOF probabilities at the temperature fitted on the other folds' OOF."""
    out = np.empty_like(np.asarray(raw, dtype=np.float64))
    y = np.asarray(labels, dtype=np.int64)
    for k in np.unique(folds):
        va = folds == k
        t = fit_temperature(raw[~va], y[~va]).temperature if (~va).any() else 1.0
        out[va] = apply_temperature(raw[va], t)
    return out


def select(oof: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray, modes: list[str], *,
           enabled: bool = True, seed: int = 0, rule: str = "resolved") -> tuple[dict[str, str], dict[str, list[dict]]]:
    """Winner per mode and the table behind it.

    ``oof``: name -> honest calibrated OOF probabilities float64[n,3] (missing names are skipped).
    ``rule``: 'lowest' or 'resolved' (module docstring). Returns ({mode: winner}, {mode: [{name, log_loss, lo, hi,
    diff_vs_winner: {mean, lo, hi}}...]}), the table sorted by log loss. ``enabled=False`` keeps the full model of
    each mode (candidate_names(mode)[0]) when present.
    """
    if rule not in ("lowest", "resolved"):
        raise ValueError(f"select rule must be 'lowest' or 'resolved', not {rule!r}")
    winners: dict[str, str] = {}
    tables: dict[str, list[dict]] = {}
    for mode in modes:
        names = [n for n in candidate_names(mode) if n in oof]
        if not names:
            continue
        scores = {n: log_loss(labels, oof[n]) for n in names}
        diffs: dict[tuple[str, str], dict[str, float]] = {}  # the rule's bootstraps are the table's: computed once

        def lowest(cands: list[str]) -> str:  # ties go to the earlier (more complex) candidate
            return min(cands, key=lambda n: (scores[n], names.index(n)))

        def diff(a: str, b: str) -> dict[str, float]:
            if (a, b) not in diffs:
                diffs[(a, b)] = log_loss_difference(labels, oof[a], oof[b], groups, seed=seed)
            return diffs[(a, b)]

        if not enabled:
            best = names[0]
        else:
            best = resolved_winner(names, scores, lowest, diff) if rule == "resolved" else lowest(names)
        rows = []
        for n in sorted(names, key=lambda n: scores[n]):
            ci = log_loss_interval(labels, oof[n], groups, seed=seed)
            d = diff(n, best) if n != best else None
            rows.append({"name": n, "log_loss": scores[n], "lo": ci["lo"], "hi": ci["hi"],
                         "diff_vs_winner": None if d is None else {k: d[k] for k in ("mean", "lo", "hi")}})
        winners[mode], tables[mode] = best, rows
    return winners, tables


def resolved_winner(names: list[str], scores: dict[str, float], lowest, diff) -> str:
    """SELECT_REFERENCE, unless candidates beat it out of fold with a paired 95% interval below zero: then the lowest
    of those. Without the reference among ``names``: the lowest OOF log loss. ``lowest(names) -> name`` and
    ``diff(a, b) -> paired difference a − b`` are :func:`select`'s (shared, so no bootstrap runs twice)."""
    if SELECT_REFERENCE not in names or lowest(names) == SELECT_REFERENCE:
        return lowest(names)
    beaten = [n for n in names if scores[n] < scores[SELECT_REFERENCE]
              and verdict(diff(n, SELECT_REFERENCE)) == "a better"]
    return lowest(beaten) if beaten else SELECT_REFERENCE
