"""arena_kd.blend.log_pool (the log pool candidate): one hand value, the identity start, recovery of known weights,
never worse than its first member where fitted, bounds, position symmetry, an honest cross-fit; and the candidate in a
stacker folder: trained, read back with its checks, predicted exactly as fitted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_stacking_run import _cfg, _fake_student, _soft_uniform, _training_frame, _write_student_oof

from arena_kd.blend.log_pool import W_MAX, cross_fitted_pool, fit_pool, pool_probs
from arena_kd.common.metrics import log_loss, softmax

SWAP = [1, 0, 2]


def _members(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [softmax(rng.normal(size=(n, 3))), softmax(rng.normal(scale=2.0, size=(n, 3)))]


def test_hand_value():
    p1, p2 = np.array([[0.5, 0.3, 0.2]]), np.array([[0.2, 0.2, 0.6]])
    got = pool_probs([p1, p2], [1.0, 1.0], np.log(2.0))  # z = log(0.10, 0.06, 0.12 * 2)
    np.testing.assert_allclose(got, [[0.10 / 0.40, 0.06 / 0.40, 0.24 / 0.40]], rtol=1e-12)


def test_first_member_alone_is_the_identity():
    m = _members(50)
    np.testing.assert_allclose(pool_probs(m, [1.0, 0.0], 0.0), m[0], rtol=1e-12)


def test_fit_recovers_known_weights_and_tie_offset():
    m = _members(40_000, seed=1)
    truth = pool_probs(m, [0.7, 1.3], 0.4)
    rng = np.random.default_rng(2)
    y = (rng.random(len(truth))[:, None] > np.cumsum(truth, axis=1)).sum(axis=1)
    fit = fit_pool(m, y)
    np.testing.assert_allclose(fit.weights, [0.7, 1.3], atol=0.06)
    assert fit.tie_offset == pytest.approx(0.4, abs=0.06)
    assert fit.log_loss_after < fit.log_loss_before and fit.n == len(y)


def test_never_worse_than_its_first_member_and_weights_stay_in_bounds():
    rng = np.random.default_rng(3)
    n = 600
    y = rng.integers(0, 3, size=n)
    good = softmax(3.0 * np.eye(3)[y] + rng.normal(size=(n, 3)))
    inverted = softmax(-3.0 * np.eye(3)[y])  # ranks every row the wrong way: its weight must stop at 0
    fit = fit_pool([good, inverted], y)
    assert fit.log_loss_after <= log_loss(y, good) + 1e-12
    assert fit.weights[1] == pytest.approx(0.0, abs=1e-9) and 0.0 < fit.weights[0] <= W_MAX
    noise = _members(n, seed=4)
    fit = fit_pool(noise, y)  # nothing to learn: the pool may not fit worse than member 0 on these rows
    assert fit.log_loss_after <= fit.log_loss_before + 1e-12


def test_prior_keeps_a_few_separable_rows_from_running_to_the_bounds(monkeypatch):
    """Was (make rehearsal, 118 rows in a fold): the unpenalised fit went to the bounds and scored 3.81 on the other
    fold. Rows whose label is always member 0's top class are separable: without the prior the likelihood asks for an
    infinite weight; with it the weight stays a few units from its start."""
    import arena_kd.blend.log_pool as log_pool

    rng = np.random.default_rng(7)
    n = 30
    z = rng.normal(scale=0.3, size=(n, 3))
    m0 = softmax(z)
    y = z.argmax(axis=1)
    m1 = softmax(rng.normal(size=(n, 3)))
    fit = fit_pool([m0, m1], y)
    assert fit.weights[0] < 6.0 and abs(fit.tie_offset) < 6.0
    assert fit.log_loss_after < fit.log_loss_before  # it still learns from them
    monkeypatch.setattr(log_pool, "PRIOR_SD", 1e9)
    assert log_pool.fit_pool([m0, m1], y).weights[0] == pytest.approx(W_MAX)


def test_pool_of_position_symmetric_members_is_symmetric():
    m = _members(30, seed=5)
    sym = [(p + p[:, SWAP]) / 2 for p in m]  # p(swapped pair) = p with A and B exchanged
    a = pool_probs(sym, [0.8, 1.1], -0.3)
    b = pool_probs([p[:, SWAP] for p in sym], [0.8, 1.1], -0.3)
    np.testing.assert_allclose(b, a[:, SWAP], rtol=1e-12)


def test_cross_fit_is_honest():
    """Fold k's pooled rows use weights fitted without fold k: its own labels cannot move them."""
    rng = np.random.default_rng(6)
    n = 300
    y = rng.integers(0, 3, size=n)
    m = [softmax(2.0 * np.eye(3)[y] + rng.normal(size=(n, 3))), softmax(rng.normal(size=(n, 3)))]
    folds = np.arange(n) % 3
    a = cross_fitted_pool(m, y, folds)
    y2 = y.copy()
    y2[folds == 0] = rng.integers(0, 3, size=int((folds == 0).sum()))
    b = cross_fitted_pool(m, y2, folds)
    np.testing.assert_array_equal(a[folds == 0], b[folds == 0])
    assert not np.allclose(a[folds == 1], b[folds == 1])


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    from arena_kd.stacking.run import run_stacking

    cfg = _cfg(tmp_path_factory.mktemp("pool"))
    frame = _training_frame(cfg)
    student = _fake_student(frame)
    _write_student_oof(cfg, frame, student)
    _soft_uniform(cfg, frame)
    return cfg, frame, student, run_stacking(cfg)


def test_stacking_trains_the_pool_from_honest_oof_and_predicts_as_fitted(stacked):
    from arena_kd.blend.stacker import load_stacker
    from arena_kd.common.io import read_keyed_table

    cfg, frame, student, manifest = stacked
    out = cfg.workdir_path / "stacking"
    spec = manifest["models"]["log_pool"]
    assert spec["kind"] == "log_pool" and spec["members"] == ["features_only", "student"]
    assert manifest["models"]["log_pool_single"]["members"] == ["features_only", "student_single"]
    assert {r["name"] for r in manifest["candidates"]["tta"]} >= {"log_pool", "stacker", "features_only"}
    oof, _ = read_keyed_table(out / "oof.parquet")
    cols = lambda n: [f"{n}_{c}" for c in ("a", "b", "tie")]  # noqa: E731
    y, folds = oof["label"].to_numpy(), oof["fold"].to_numpy()
    members = [oof[cols(f"{m}_raw")].to_numpy() for m in spec["members"]]
    np.testing.assert_allclose(oof[cols("log_pool")].to_numpy(), cross_fitted_pool(members, y, folds), rtol=1e-9)
    fit = fit_pool(members, y)
    assert spec["weights"] == pytest.approx(fit.weights) and spec["tie_offset"] == pytest.approx(fit.tie_offset)

    stacker = load_stacker(out)
    test = frame.head(25).reset_index(drop=True)
    st = {"orig": student["orig"][:25], "swap": student["swap"][:25]}
    parts = [stacker.predict_model(test, m, st, calibrate=False) for m in spec["members"]]
    np.testing.assert_allclose(stacker.predict_model(test, "log_pool", st),
                               pool_probs(parts, spec["weights"], spec["tie_offset"]), rtol=1e-12)
    single = stacker.predict_model(test, "log_pool_single", st)  # the one-orientation student: orig only
    one = {"orig": st["orig"], "swap": None}
    np.testing.assert_allclose(single, stacker.predict_model(test, "log_pool_single", one))


@pytest.mark.parametrize("damage,why", [
    (lambda s: s.update(weights=[1.0, -0.5]), "log pool weight"),
    (lambda s: s.update(weights=[1.0, float("nan")]), "log pool weight"),
    (lambda s: s.update(weights=[1.0]), "as weights"),
    (lambda s: s.update(tie_offset=1e9), "tie_offset"),
    (lambda s: s.update(members=["features_only", "no_such_model"]), "'no_such_model' is not a usable model"),
    (lambda s: s.update(members=["features_only", "log_pool_single"]), "'log_pool_single' is not a usable model"),
])
def test_damaged_pool_is_not_used(stacked, tmp_path, damage, why):
    from arena_kd.blend.stacker import load_stacker

    cfg = stacked[0]
    d = tmp_path / "stacking"
    shutil.copytree(cfg.workdir_path / "stacking", d)
    m = json.loads((d / "stacker.json").read_text())
    m["selection"]["tta"] = "log_pool"
    damage(m["models"]["log_pool"])
    (d / "stacker.json").write_text(json.dumps(m))
    stacker = load_stacker(d)
    assert why in stacker.unusable["log_pool"] and stacker.chosen("tta") != "log_pool"


def test_pool_with_an_unusable_member_is_not_used(stacked, tmp_path):
    from arena_kd.blend.stacker import load_stacker

    cfg = stacked[0]
    d = tmp_path / "stacking"
    shutil.copytree(cfg.workdir_path / "stacking", d)
    m = json.loads((d / "stacker.json").read_text())
    m["models"]["features_only"]["temperature"] = -1.0
    (d / "stacker.json").write_text(json.dumps(m))
    stacker = load_stacker(d)
    assert "features_only" in stacker.unusable["log_pool"] and "temperature" in stacker.unusable["log_pool"]


def test_report_compares_each_student_candidate_with_features_only_out_of_fold(stacked):
    """(c) out of fold in report.md: the candidates using the student against the features-only stacker, from the
    stacker's OOF as the selection reads it, on every row and per source."""
    from arena_kd.common.io import read_keyed_table
    from arena_kd.oof_report import read_stacker_oof, stacker_oof_comparison, stacker_section

    cfg = stacked[0]
    cmp = stacker_oof_comparison(read_stacker_oof(cfg.workdir_path), seed=cfg.seed)
    oof, _ = read_keyed_table(cfg.workdir_path / "stacking" / "oof.parquet")
    assert set(cmp) == {"stacker", "log_pool"}
    assert set(cmp["log_pool"]) == {"all", *map(str, oof["source"].unique())}
    y = oof["label"].to_numpy()
    cols = lambda n: [f"{n}_{c}" for c in ("a", "b", "tie")]  # noqa: E731
    d = cmp["log_pool"]["all"]
    assert d["rows"] == len(oof) and d["b"] == pytest.approx(log_loss(y, oof[cols("features_only")].to_numpy()))
    assert d["a"] == pytest.approx(log_loss(y, oof[cols("log_pool")].to_numpy()))
    assert d["diff"] == pytest.approx(d["a"] - d["b"]) and d["lo"] <= d["diff"] <= d["hi"]
    text = stacker_section(cmp)
    assert text.startswith("### (c) out of fold") and "| log pool (features-only + student) | all |" in text
    assert stacker_oof_comparison(read_stacker_oof(cfg.workdir_path / "nowhere")) is None
