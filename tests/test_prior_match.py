"""student/prior_match.py: prior-matched soft labels — the fitted offsets, their maximum-likelihood property, groups,
unlabelled rows, per-teacher stacks, and what the student stage hands its trainer under student.distill.prior_match."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _fakes import fake_logits, patch_train_and_predict
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

import arena_kd.student.run as srun
import arena_kd.teachers.run as trun
from arena_kd.common.config import load_config
from arena_kd.pipeline import hard_student_config
from arena_kd.student.prior_match import FLOOR, MIN_GROUP_ROWS, fit_offsets, match_frame

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _pooled(labels):
    """A/B pooled label frequencies (what the symmetric fit matches)."""
    c = np.bincount(labels, minlength=3).astype(float)
    return np.array([(c[0] + c[1]) / 2, (c[0] + c[1]) / 2, c[2]]) / len(labels)


def _sym_mean(p):
    """Mean over the rows and their A/B swaps (what the symmetric fit matches to the pooled frequencies)."""
    return (p.mean(0) + p[:, [1, 0, 2]].mean(0)) / 2


def _teacher(n, seed, tie_bias=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)) + np.array([0.0, 0.0, tie_bias])).astype(np.float32)


def test_constant_teacher_becomes_the_pooled_label_frequencies_by_hand():
    # labels 0,0,1,2 and their swaps 1,1,0,2: A 3/8, B 3/8, tie 2/8 — for every row, since the teacher is constant
    b = fit_offsets(np.zeros((4, 3)), np.array([0, 0, 1, 2]))
    assert np.allclose(softmax(b), [0.375, 0.375, 0.25], atol=1e-7)
    assert b[0] == pytest.approx(b[1]) and b.max() == 0.0
    asym = fit_offsets(np.zeros((4, 3)), np.array([0, 0, 1, 2]), symmetric=False)
    assert np.allclose(softmax(asym), [0.5, 0.25, 0.25], atol=1e-7)


def test_offsets_are_the_maximum_likelihood_intercepts():
    logp, y = _teacher(300, 0), np.random.default_rng(1).integers(0, 3, 300)
    b = fit_offsets(logp, y, symmetric=False)
    matched = log_softmax(log_softmax(logp, axis=-1) + b, axis=-1)
    assert np.allclose(softmax(matched, axis=-1).mean(0), np.bincount(y, minlength=3) / 300, atol=1e-7)

    def nll(c):
        return -log_softmax(logp + c, axis=-1)[np.arange(300), y].mean()

    best = minimize(nll, np.zeros(3), method="BFGS").x
    assert nll(b) <= nll(best) + 1e-8  # the same optimum scipy finds (up to a common shift)
    assert nll(b) <= nll(np.zeros(3))  # so the matched soft labels never score worse than the teacher's on these rows
    rows = np.arange(300)
    # within the group no row moves against another: every row's log-odds between two classes shift by b_c - b_c'
    shift = (matched - matched[:, [2]]) - (log_softmax(logp, axis=-1) - log_softmax(logp, axis=-1)[:, [2]])
    assert np.allclose(shift, b - b[2], atol=1e-5)
    assert matched[rows, y].mean() > log_softmax(logp, axis=-1)[rows, y].mean() - 1e-9


def test_a_class_absent_from_the_labels_is_floored_and_stays_finite():
    logp, y = _teacher(200, 2, tie_bias=1.0), np.random.default_rng(3).integers(0, 2, 200)  # no ties, like HH-RLHF
    b = fit_offsets(logp, y)
    assert b[2] == FLOOR and np.isfinite(b).all()
    p = softmax(log_softmax(logp, axis=-1) + b, axis=-1)
    assert p[:, 2].max() < 1e-7 and np.allclose(_sym_mean(p)[:2], _pooled(y)[:2], atol=1e-6)


def test_per_teacher_stacks_are_fitted_one_teacher_at_a_time():
    y = np.random.default_rng(4).integers(0, 3, 120)
    t1, t2 = _teacher(120, 5, tie_bias=-2.0), _teacher(120, 6, tie_bias=1.5)
    both = fit_offsets(np.stack([t1, t2], axis=1), y)
    assert both.shape == (2, 3)
    assert np.allclose(both[0], fit_offsets(t1, y)) and np.allclose(both[1], fit_offsets(t2, y))


def _frame(n_hh, n_mt, seed=0):
    rng = np.random.default_rng(seed)
    hh = pd.DataFrame({"label": rng.integers(0, 2, n_hh), "source": "hh"})
    mt = pd.DataFrame({"label": rng.choice(3, n_mt, p=[0.4, 0.35, 0.25]), "source": "mt"})
    df = pd.concat([hh, mt], ignore_index=True)
    df["teacher_logits"] = list(_teacher(len(df), seed + 1, tie_bias=-0.5))
    return df


def test_per_source_matches_each_source_and_unlabelled_rows_take_their_sources_offsets():
    df = _frame(120, 100)
    extra = pd.DataFrame({"label": [pd.NA] * 3, "source": ["hh", "mt", "unseen"],
                          "teacher_logits": list(np.zeros((3, 3), dtype=np.float32))})
    df = pd.concat([df, extra], ignore_index=True)
    matched, summary = match_frame(df, "per_source")
    p = softmax(np.stack(matched["teacher_logits"]).astype(np.float64), axis=-1)
    labels = pd.to_numeric(df["label"]).to_numpy()
    for src in ("hh", "mt"):
        m = (df["source"] == src).to_numpy() & ~np.isnan(labels)
        assert np.allclose(_sym_mean(p[m]), _pooled(labels[m].astype(int)), atol=1e-5), src
        assert summary[src]["own_offsets"]
    assert p[220, 2] < 1e-7  # an unlabelled HH row: no ties, like its source
    b_mt = fit_offsets(np.stack(df["teacher_logits"][120:220]), labels[120:220].astype(int))
    assert p[221] == pytest.approx(softmax(b_mt), abs=1e-6)  # an unlabelled MT row (zero logits): MT's own offsets
    assert summary["unseen"]["labelled"] == 0 and not summary["unseen"]["own_offsets"]
    labelled = ~np.isnan(labels)
    b_all = fit_offsets(np.stack(df["teacher_logits"][labelled]), labels[labelled].astype(int))
    assert p[222] == pytest.approx(softmax(b_all), abs=1e-6)  # a source without labelled rows: all rows' offsets
    assert df["teacher_logits"].iloc[0] is not matched["teacher_logits"].iloc[0]  # a copy: the input is untouched


def test_all_rows_mode_and_small_sources_and_off():
    df = _frame(120, MIN_GROUP_ROWS - 1)
    matched, summary = match_frame(df, "per_source")
    assert summary["hh"]["own_offsets"] and not summary["mt"]["own_offsets"]  # too few rows: all rows' offsets
    together, s2 = match_frame(df, "all_rows")
    assert list(s2) == ["all rows"]
    p = softmax(np.stack(together["teacher_logits"]).astype(np.float64), axis=-1)
    assert np.allclose(_sym_mean(p), _pooled(df["label"].to_numpy()), atol=1e-6)
    mt = (df["source"] == "mt").to_numpy()
    assert np.allclose(np.stack(matched["teacher_logits"])[mt], np.stack(together["teacher_logits"])[mt], atol=1e-5)
    same, s3 = match_frame(df, "off")
    assert same is df and s3 == {}


class RecordingTrainer:
    """Stands in for train_and_predict and keeps the frame each fold student would train on."""

    def __init__(self):
        self.frames = []

    def __call__(self, model_cfg, train_cfg, predict_cfg, render_cfg, train_df, valid_df, out_dir, *, seed, workdir,
                 loss_fn=None, also_predict=None, tokenizer_texts=None, init_seed=None):
        self.frames.append(train_df.copy())
        lg = fake_logits(valid_df["id"], model_cfg.random_init["model_type"])
        return {"orig": lg, "swap": lg, "avg": lg}, {"adapter_dir": str(out_dir), "train_metrics": {}}, None


def _cfg(tmp_path, *sets):
    return load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "data.max_rows=400", "student.final=none", *sets])


def test_the_student_trains_on_soft_labels_matched_per_source_of_its_own_fold(tmp_path, monkeypatch):
    fake = patch_train_and_predict(monkeypatch, RecordingTrainer(), trun, srun)
    cfg = _cfg(tmp_path, "student.distill.prior_match=per_source")
    trun.run_teachers(cfg)
    fake.frames.clear()
    srun.run_distill(cfg)
    assert len(fake.frames) == 2
    for df in fake.frames:
        p = softmax(np.stack(df["teacher_logits"]).astype(np.float64), axis=-1)
        for src in ("hh_harmless", "mtbench_human"):
            m = (df["source"] == src).to_numpy()
            assert m.sum() >= MIN_GROUP_ROWS
            assert np.allclose(_sym_mean(p[m]), _pooled(df["label"].astype(int).to_numpy()[m]), atol=1e-5), src
        assert p[(df["source"] == "hh_harmless").to_numpy(), 2].max() < 1e-6  # HH-RLHF has no ties
    # off (the default): the file's soft labels as they are, and the default keeps older runs' config hash
    fake.frames.clear()
    plain = _cfg(tmp_path)  # same workdir, teachers' files and folds
    srun.run_distill(plain, force=True)
    p = softmax(np.stack(fake.frames[0]["teacher_logits"]).astype(np.float64), axis=-1)
    assert p[(fake.frames[0]["source"] == "hh_harmless").to_numpy(), 2].max() > 1e-3
    assert srun.student_config_hash(cfg) != srun.student_config_hash(plain)
    assert hard_student_config(cfg).student.distill.prior_match == "off"  # the hard twin has no soft labels to match


def test_prior_rows_shrink_a_sources_frequencies_towards_all_rows():
    logp, y = _teacher(200, 7), np.random.default_rng(8).integers(0, 2, 200)  # no ties
    prior = np.array([0.4, 0.4, 0.2])
    b = fit_offsets(logp, y, prior=prior, prior_rows=200)  # as many pseudo-rows as rows: halfway
    p = softmax(log_softmax(logp, axis=-1) + b, axis=-1)
    assert np.allclose(_sym_mean(p), [0.45, 0.45, 0.1], atol=1e-6) and b[2] > FLOOR
    assert np.allclose(fit_offsets(logp, y, prior=prior, prior_rows=0), fit_offsets(logp, y))
    df = _frame(120, 100)
    soft, summary = match_frame(df, "per_source", prior_rows=60)
    pooled = _pooled(df["label"].to_numpy())
    hh = (df["source"] == "hh").to_numpy()
    expect = (120 * _pooled(df["label"].to_numpy()[hh]) + 60 * pooled) / 180
    p = softmax(np.stack(soft["teacher_logits"]).astype(np.float64), axis=-1)
    assert np.allclose(_sym_mean(p[hh]), expect, atol=1e-5)
    assert summary["hh"]["labels"] == pytest.approx(expect, abs=1e-4)


def test_a_hard_label_student_ignores_the_soft_label_settings_in_its_config_hash(tmp_path):
    hard = _cfg(tmp_path, "student.distill.alpha=0")
    same = _cfg(tmp_path, "student.distill.alpha=0", "student.distill.prior_match=per_source",
                "student.distill.prior_match_rows=100")
    assert srun.student_config_hash(hard) == srun.student_config_hash(same)  # no soft term: nothing to retrain
    soft = _cfg(tmp_path, "student.distill.prior_match=per_source")
    shrunk = _cfg(tmp_path, "student.distill.prior_match=per_source", "student.distill.prior_match_rows=5")
    assert srun.student_config_hash(soft) != srun.student_config_hash(shrunk)
