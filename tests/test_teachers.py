"""teachers/: k-fold OOF logits, offline teacher files, combiner, resume and hash refusal.

Most tests replace the llm fine-tuning of one fold by a deterministic fake (fast); the smoke test runs
the real llm/ engine on the tiny random models of configs/smoke.yaml.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _fakes import fake_logits

import arena_kd.teachers.run as trun
from arena_kd.common.config import load_config
from arena_kd.common.errors import UserError
from arena_kd.common.io import read_keyed_table
from arena_kd.common.metrics import log_loss, softmax
from arena_kd.kfold.oof import read_teacher_logits
from arena_kd.kfold.runner import FAULT_ENV, InjectedFault
from arena_kd.teachers.combine import fit_weights, mixture_log_loss, teacher_probs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _cfg(tmp_path, *sets):
    return load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "data.max_rows=24", *sets])




class FakeTrainer:
    """Stands in for arena_kd.kfold.fold_model.train_and_predict; records the folds it was asked to train."""

    def __init__(self):
        self.calls = []

    def __call__(self, model_cfg, train_cfg, predict_cfg, render_cfg, train_df, valid_df, out_dir, *, seed, workdir,
                 loss_fn=None, also_predict=None, tokenizer_texts=None, init_seed=None):
        self.init_seeds = getattr(self, "init_seeds", []) + [init_seed]  # every fold must start from one initialisation
        self.calls.append((model_cfg.random_init["model_type"], seed, len(train_df)))
        Path(out_dir, "checkpoints", "checkpoint-1").mkdir(parents=True, exist_ok=True)  # must be cleaned up
        lg = fake_logits(valid_df["id"], model_cfg.random_init["model_type"] + train_cfg.model_dump_json())
        tta = {"orig": lg + 0.1, "swap": lg - 0.1, "avg": lg}
        extra = None
        if also_predict is not None:
            extra = {k: fake_logits(also_predict["id"], "x") for k in ("orig", "swap", "avg")}
        return tta, {"adapter_dir": str(out_dir), "train_metrics": {}}, extra


@pytest.fixture
def fake(monkeypatch):
    f = FakeTrainer()
    monkeypatch.setattr(trun, "train_and_predict", f)
    return f


def _outputs(work: Path) -> dict[str, bytes]:
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*.parquet"))}


def test_kfold_outputs_and_soft_labels(tmp_path, fake, capsys):
    cfg = _cfg(tmp_path)
    trun.run_teachers(cfg)
    work = tmp_path / "work"
    assert len(fake.calls) == 4  # 2 teachers x 2 folds
    # one init, per-fold data seeds
    assert fake.init_seeds == [cfg.seed] * 4 and {c[1] for c in fake.calls} == {cfg.seed, cfg.seed + 1}
    oof, ometa = read_keyed_table(work / "teachers" / "tiny-gemma2" / "oof.parquet")
    assert list(oof.columns) == ["id", "fold", "logit_a", "logit_b", "logit_tie"]
    assert len(oof) == 24 and oof["id"].is_unique and set(oof["fold"]) == {0, 1}
    assert set(ometa["hashes"]) == {"config", "data", "folds"} and set(ometa["per_fold"]) == {"0", "1"}
    assert ometa["backbone"] == "random" and ometa["quantization"] == "none" and ometa["predict_max_length"] == 96
    assert not list(work.rglob("checkpoint*")), "fold checkpoints must be deleted"
    soft, smeta = read_keyed_table(work / "teachers" / "soft_labels.parquet")
    assert {"t_tiny-gemma2_a", "t_tiny-llama_tie"} <= set(soft.columns)
    assert np.allclose(np.exp(soft[["logit_a", "logit_b", "logit_tie"]].to_numpy()).sum(1), 1, atol=1e-5)
    assert sum(smeta["weights"].values()) == pytest.approx(1.0)
    assert (work / "teachers" / "config.resolved.yaml").is_file()
    table = capsys.readouterr().out
    assert "ENSEMBLE" in table and "tiny-llama" in table and "oof_logloss" in table


def test_resume_after_interrupt_skips_done_fold_and_matches(tmp_path, fake, monkeypatch):
    ref_cfg = _cfg(tmp_path / "ref")
    trun.run_teachers(ref_cfg)
    ref = _outputs(tmp_path / "ref" / "work")
    fake.calls.clear()

    cfg = _cfg(tmp_path)
    monkeypatch.setenv(FAULT_ENV, "1")
    with pytest.raises(InjectedFault):
        trun.run_teachers(cfg)
    work = tmp_path / "work"
    assert (work / "teachers" / "tiny-gemma2" / "fold0.parquet").is_file()
    assert not (work / "teachers" / "tiny-gemma2" / "fold1.parquet").exists()
    monkeypatch.delenv(FAULT_ENV)
    fake.calls.clear()
    trun.run_teachers(cfg)
    assert len(fake.calls) == 3  # fold 0 of the first teacher was skipped
    assert _outputs(work).keys() == ref.keys()
    for name, blob in _outputs(work).items():
        a = pd.read_parquet(work / name)
        b = pd.read_parquet(tmp_path / "ref" / "work" / name)
        pd.testing.assert_frame_equal(a, b)


def test_config_change_refused_unless_force(tmp_path, fake):
    trun.run_teachers(_cfg(tmp_path))
    changed = _cfg(tmp_path, "teachers.models.0.train.learning_rate=0.5")
    with pytest.raises(UserError, match=r"config hash differs.*--force"):
        trun.run_teachers(changed)
    fake.calls.clear()
    trun.run_teachers(changed, force=True)
    assert len(fake.calls) == 4
    # changing only the ensemble weights does not invalidate fold outputs
    fake.calls.clear()
    trun.run_teachers(_cfg(tmp_path, "teachers.models.0.train.learning_rate=0.5", "teachers.combine.weights=equal"))
    assert fake.calls == []


def test_data_change_refused(tmp_path, fake):
    trun.run_teachers(_cfg(tmp_path))
    src = ROOT / "data" / "sample" / "train.csv"
    df = pd.read_csv(src)
    edited = tmp_path / "train_edited.csv"
    df.loc[:, "response_a"] = df["response_a"].str.replace("a", "e", regex=False)
    df.to_csv(edited, index=False)
    with pytest.raises(UserError, match="data hash differs"):
        trun.run_teachers(_cfg(tmp_path, f"data.train={edited}"))


def _offline_cfg(tmp_path, path):
    return _cfg(tmp_path, "teachers.models.1.source=logits", "teachers.models.1.model=null",
                f"teachers.models.1.logits_file={path}")


def test_offline_logits_teacher_and_coverage(tmp_path, fake):
    from arena_kd.kfold.training_data import load_training_data

    ids = load_training_data(_cfg(tmp_path)).frame["id"]
    probs = softmax(fake_logits(ids, "offline"))
    good = tmp_path / "offline.csv"
    pd.DataFrame({"id": ids, "winner_model_a": probs[:, 0], "winner_model_b": probs[:, 1],
                  "winner_tie": probs[:, 2]}).to_csv(good, index=False)
    trun.run_teachers(_offline_cfg(tmp_path, good))
    oof, meta = read_keyed_table(tmp_path / "work" / "teachers" / "tiny-llama" / "oof.parquet")
    assert meta["detected"] == "probabilities" and meta["source"] == "logits"
    got = oof.set_index("id").loc[ids, ["logit_a", "logit_b", "logit_tie"]].to_numpy()
    assert np.allclose(np.exp(got), probs, atol=1e-5)

    missing = tmp_path / "missing.parquet"
    lg = fake_logits(ids, "offline")
    pd.DataFrame({"id": ids[3:], "logit_a": lg[3:, 0], "logit_b": lg[3:, 1],
                  "logit_tie": lg[3:, 2]}).to_parquet(missing)
    with pytest.raises(UserError, match=r"missing.parquet: 3 of 24 training ids have no teacher logits \(e\.g\. "):
        trun.run_teachers(_offline_cfg(tmp_path, missing))


def test_offline_reader_detects_and_validates(tmp_path):
    p = tmp_path / "t.csv"
    pd.DataFrame({"id": [1, 2], "logit_a": [2.0, -1.0], "logit_b": [0.5, 3.0],
                  "logit_tie": [0.0, 0.0]}).to_csv(p, index=False)
    df, kind = read_teacher_logits(p)
    assert kind == "logits" and df["logit_a"].tolist() == [2.0, -1.0] and df["id"].tolist() == ["1", "2"]
    pd.DataFrame({"id": [1, 2], "logit_a": [0.2, 0.5], "logit_b": [0.3, 0.5],
                  "logit_tie": [0.5, 0.0]}).to_csv(p, index=False)
    df, kind = read_teacher_logits(p)
    assert kind == "probabilities" and df["logit_a"].iloc[0] == pytest.approx(np.log(0.2), abs=1e-6)
    pd.DataFrame({"id": [1, 2], "logit_a": [0.2, "x"], "logit_b": [0.3, 0.5],
                  "logit_tie": [0.5, 0.0]}).to_csv(p, index=False)
    with pytest.raises(UserError, match=r"t.csv: row 2, column 'logit_a': not a finite number"):
        read_teacher_logits(p)
    pd.DataFrame({"id": [1, 1], "prob_a": [0.2, 0.2], "prob_b": [0.3, 0.3],
                  "prob_tie": [0.5, 0.5]}).to_csv(p, index=False)
    with pytest.raises(UserError, match=r"row 2, column 'id': duplicate id '1'"):
        read_teacher_logits(p)


def test_fitted_weights_downweight_noise_teacher():
    rng = np.random.default_rng(0)
    n = 600
    labels = rng.integers(0, 3, n)
    good = rng.normal(0, 1, (n, 3))
    good[np.arange(n), labels] += 2.0  # informative teacher
    noise = rng.normal(0, 3, (n, 3))  # confident noise
    probs = teacher_probs([good, noise])
    w = fit_weights(probs, labels)
    equal = mixture_log_loss(np.array([0.5, 0.5]), probs, labels)
    fitted = mixture_log_loss(w, probs, labels)
    assert w[0] > 0.8 and w.sum() == pytest.approx(1.0)
    assert fitted < equal - 0.1
    # not worse than the good teacher alone (softmax weights never reach exactly 0)
    assert fitted <= log_loss(labels, probs[0]) + 1e-4
    pinned = fit_weights(probs, labels, [None, 0.25])  # a fixed share stays fixed
    assert pinned[1] == pytest.approx(0.25) and pinned[0] == pytest.approx(0.75)


def test_fixed_weights_need_every_weight(tmp_path, fake):
    with pytest.raises(UserError, match="teacher 'tiny-llama' has no `weight`"):
        trun.run_teachers(_cfg(tmp_path, "teachers.combine.weights=fixed", "teachers.models.0.weight=2"))


def test_cli_reports_coverage_error_in_one_line(tmp_path, fake, monkeypatch, capsys):
    import sys

    from arena_kd import cli

    bad = tmp_path / "empty.csv"
    pd.DataFrame({"id": ["nope"], "logit_a": [0.0], "logit_b": [0.0], "logit_tie": [0.0]}).to_csv(bad, index=False)
    monkeypatch.setattr(sys, "argv", ["arena-kd", "teachers", "--config", str(SMOKE),
                                      "--set", f"workdir={tmp_path / 'w'}", "--set", "data.max_rows=24",
                                      "--set", "teachers.models.1.source=logits",
                                      "--set", "teachers.models.1.model=null",
                                      "--set", f"teachers.models.1.logits_file={bad}"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty.csv: 24 of 24 training ids have no teacher logits" in err[0]


def test_predict_extra_pseudo_labels(tmp_path, fake):
    from arena_kd.data.readers import read_pairs

    extra_src = ROOT / "data" / "sample" / "test.csv"
    cfg = _cfg(tmp_path, "teachers.predict_extra=true", f"data.extra=[{extra_src}]")
    trun.run_teachers(cfg)
    want = set(read_pairs(extra_src)["id"].astype(str))
    soft, meta = read_keyed_table(tmp_path / "work" / "teachers" / "soft_labels_extra.parquet")
    assert set(soft["id"]) == want and {"t_tiny-llama_a", "logit_tie"} <= set(soft.columns)
    per, pmeta = read_keyed_table(tmp_path / "work" / "teachers" / "tiny-gemma2" / "extra.parquet")
    assert set(per["id"]) == want and pmeta["folds"] == [0, 1]
    assert np.allclose(np.exp(soft[["logit_a", "logit_b", "logit_tie"]].to_numpy()).sum(1), 1, atol=1e-5)


def shared_smoke_cfg(tmp_path_factory, *sets):
    """Smoke config whose workdir is shared by the real-engine tests of this session (teachers resume, so they train
    once)."""
    work = tmp_path_factory.getbasetemp() / "shared-smoke" / "work"
    return load_config(SMOKE, [f"workdir={work}", "data.max_rows=24", *sets]), work


def test_smoke_real_engine_two_teachers(tmp_path_factory, capsys):
    """configs/smoke.yaml through the real llm/ engine: 2 tiny teachers x 2 folds, then a rerun that skips every
    fold."""
    cfg, work = shared_smoke_cfg(tmp_path_factory)
    trun.run_teachers(cfg)
    for name in ("tiny-gemma2", "tiny-llama"):
        oof, ometa = read_keyed_table(work / "teachers" / name / "oof.parquet")
        assert len(oof) == 24 and np.isfinite(oof[["logit_a", "logit_b", "logit_tie"]].to_numpy()).all()
        assert 0 < ometa["overall"]["log_loss"] < 5 and ometa["wall_time_s"] > 0
        fold, fmeta = read_keyed_table(work / "teachers" / name / "fold0.parquet")
        # TTA: avg is the mean log-softmax of the two orientations
        from scipy.special import log_softmax

        o = log_softmax(fold[["orig_logit_a", "orig_logit_b", "orig_logit_tie"]].to_numpy(np.float64), axis=1)
        s = log_softmax(fold[["swap_logit_a", "swap_logit_b", "swap_logit_tie"]].to_numpy(np.float64), axis=1)
        avg = log_softmax(fold[["logit_a", "logit_b", "logit_tie"]].to_numpy(np.float64), axis=1)
        assert np.allclose(log_softmax((o + s) / 2, axis=1), avg, atol=1e-4)
    assert not list(work.rglob("checkpoint-*"))
    before = _outputs(work)
    capsys.readouterr()
    trun.run_teachers(cfg)  # everything done: every fold skipped, same files
    assert capsys.readouterr().out.count("skipped") == 4
    for name, blob in _outputs(work).items():
        pd.testing.assert_frame_equal(pd.read_parquet(work / name), pd.read_parquet(io_bytes(before[name])))


def io_bytes(blob: bytes):
    import io

    return io.BytesIO(blob)


def test_fitted_combine_temperature_recovers_an_overconfident_teachers_scale():
    """Labels drawn from softmax(z), the teacher says softmax(3z): the fitted T is ~3 (hand value), and a number is
    used as it is."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 3))
    p = softmax(z)
    y = (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    probs = teacher_probs([3 * z])
    T, fit = trun._combine_temperature("fit", probs, np.ones(1), y)
    assert T == pytest.approx(3.0, rel=0.05) and fit["log_loss_after"] < fit["log_loss_before"]
    assert trun._combine_temperature(2.5, probs, np.ones(1), y) == (2.5, None)


def test_combine_temperature_fit_tempers_train_and_extra_soft_labels_alike(tmp_path, fake, capsys):
    cfg = _cfg(tmp_path, "teachers.combine.temperature=fit", "teachers.predict_extra=true",
               "data.extra=[data/sample/test.csv]")
    trun.run_teachers(cfg)
    work = tmp_path / "work" / "teachers"
    soft, meta = read_keyed_table(work / "soft_labels.parquet")
    T = meta["temperature"]
    assert meta["temperature_mode"] == "fit" and T == pytest.approx(meta["temperature_fit"]["temperature"])
    assert T > 1.5  # the fake teachers' logits are noise: the fit flattens them
    assert meta["ensemble"]["log_loss"] == pytest.approx(meta["temperature_fit"]["log_loss_after"], abs=1e-5)
    assert meta["temperature_fit"]["log_loss_after"] <= meta["temperature_fit"]["log_loss_before"]
    ex, ex_meta = read_keyed_table(work / "soft_labels_extra.parquet")
    assert ex_meta["temperature"] == T
    weights = np.array([meta["weights"][n] for n in meta["teachers"]])
    raw = [read_keyed_table(work / n / "extra.parquet")[0].set_index("id").loc[ex["id"]] for n in meta["teachers"]]
    mix = np.tensordot(weights, np.stack([softmax(r[["logit_a", "logit_b", "logit_tie"]].to_numpy()) for r in raw]), 1)
    want = np.log(mix) / T
    want -= np.log(np.exp(want).sum(1, keepdims=True))
    assert np.allclose(ex[["logit_a", "logit_b", "logit_tie"]].to_numpy(), want, atol=1e-4)
    assert f"T={T:.3g} fitted on the OOF rows" in capsys.readouterr().out
    with pytest.raises(UserError, match="temperature=fit and student.distill.temperature=2 compound"):
        _cfg(tmp_path, "teachers.combine.temperature=fit", "student.distill.temperature=2")


def test_combine_removes_pseudo_labels_it_can_no_longer_make(tmp_path, fake, capsys):
    """A teacher without extra predictions (an offline file) joins: the earlier combine's soft_labels_extra (other
    teachers, weights, T) must go, or the report scores it as this run's ensemble and the student trains on it."""
    from arena_kd.data.readers import read_pairs
    from arena_kd.heldout import _teacher_test_probs
    from arena_kd.kfold.training_data import load_training_data

    extra = [f"data.extra=[{ROOT / 'data' / 'sample' / 'test.csv'}]", "teachers.predict_extra=true"]
    trun.run_teachers(first := _cfg(tmp_path, *extra))
    tdir = tmp_path / "work" / "teachers"
    assert (tdir / "soft_labels_extra.parquet").is_file() and (tdir / "soft_labels_extra.meta.json").is_file()
    test_ids = read_pairs(ROOT / "data" / "sample" / "test.csv")["id"]
    per, ens = _teacher_test_probs(first, test_ids)  # what the report scores on the test rows
    assert set(per) == {"tiny-gemma2", "tiny-llama"} and ens is not None

    ids = load_training_data(_cfg(tmp_path)).frame["id"]
    lg = fake_logits(ids, "offline")
    path = tmp_path / "offline.parquet"
    pd.DataFrame({"id": ids, "logit_a": lg[:, 0], "logit_b": lg[:, 1], "logit_tie": lg[:, 2]}).to_parquet(path)
    capsys.readouterr()
    second = _cfg(tmp_path, *extra, "teachers.models.1.source=logits", "teachers.models.1.model=null",
                  f"teachers.models.1.logits_file={path}")
    trun.run_teachers(second, force=True)
    assert not (tdir / "soft_labels_extra.parquet").exists() and not (tdir / "soft_labels_extra.meta.json").exists()
    assert (tdir / "tiny-llama" / "extra.parquet").is_file()  # the model teacher's, from before the switch ...
    per, ens = _teacher_test_probs(second, test_ids)
    assert set(per) == {"tiny-gemma2"} and ens is None  # ... is not reported as the offline teacher's
    out = capsys.readouterr().out
    assert "removed stale" in out and "data.extra from tiny-llama" in out and (tdir / "soft_labels.parquet").is_file()
