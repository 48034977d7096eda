"""student.final=fold_ensemble: every fold student exported as a member, averaged at submission (submission.ensemble).

Pure parts (the time split, the combining rule) on hand-made passes; the submission with fake members (the fakes of
tests/test_submission.py); and the real path on the smoke config's tiny Gemma2: distill → members, each verified
against its own fold model → the evaluation's and the submission's logits are the members' mean log-softmax.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_submission import FakeBackend, artifacts  # noqa: F401 - the fixture is used by name

from arena_kd.common.config import load_config
from arena_kd.common.errors import UserError
from arena_kd.common.metrics import mean_log_softmax
from arena_kd.llm.export_members import ENSEMBLE_FILE, export_members
from arena_kd.submission import run as run_mod
from arena_kd.submission.ensemble import combine_passes, member_reserve
from arena_kd.submission.student_pass import StudentPass

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------- pure parts


def test_mean_log_softmax_is_the_mean_of_each_models_log_probabilities():
    a = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    b = np.array([[10.0, 9.0, 8.0], [1.0, 3.0, 2.0]])  # a shift of a row's logits changes nothing
    got = mean_log_softmax([a, b])
    np.testing.assert_allclose(got, (_log_softmax(a) + _log_softmax(b)) / 2, atol=1e-6)
    np.testing.assert_allclose(mean_log_softmax([a]), _log_softmax(a), atol=1e-6)  # one model: its log-probabilities
    np.testing.assert_allclose(mean_log_softmax([a, a + 5.0]), _log_softmax(a), atol=1e-6)
    assert got.dtype == np.float32
    with pytest.raises(ValueError):
        mean_log_softmax([])


def test_member_reserve_splits_the_time_left_equally():
    assert member_reserve(110.0, 10.0, 2) == pytest.approx(60.0)  # member 1 of 2 may use 50 of the 100 usable s
    assert member_reserve(110.0, 10.0, 4) == pytest.approx(85.0)  # 1 of 4: 25 s
    assert member_reserve(110.0, 10.0, 1) == pytest.approx(10.0)  # the last member: everything left
    assert member_reserve(5.0, 10.0, 3) == pytest.approx(10.0)  # no usable time: the reserve alone


def _pass(n, modes, orig, swap=None, length=96):
    p = StudentPass.empty(n)
    for i, m in enumerate(modes):
        if m is None:
            p.reason[i] = "not reached: time budget"
            continue
        p.mode[i], p.max_length[i], p.orig[i], p.members[i] = m, length, orig[i], 1  # as run_student_pass sets
        if m == "tta":
            p.swap[i] = swap[i]
    return p


def test_combine_passes_averages_the_members_that_ran_a_row_alike():
    rng = np.random.default_rng(0)
    o0, s0, o1, s1 = (rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4))
    p0 = _pass(5, ["tta", "tta", None, "single", None], o0, s0)
    p0.chunks, p0.error = [{"rows": 3, "mode": "tta"}], None
    p1 = _pass(5, ["tta", "single", "tta", "single", None], o1, s1)
    p1.chunks, p1.error = [{"rows": 4, "mode": "tta"}], "1 student chunk(s) failed (first: X)"
    p1.nonfinite_rows = 2
    c = combine_passes([p0, p1], ["fold0", "fold1"])
    # row 0: both ran TTA → both orientations averaged
    np.testing.assert_allclose(c.orig[0], mean_log_softmax([o0[:1], o1[:1]])[0], atol=1e-6)
    np.testing.assert_allclose(c.swap[0], mean_log_softmax([s0[:1], s1[:1]])[0], atol=1e-6)
    # row 1: member 0 set TTA, member 1 ran it single → member 0 alone (a mixed average would mix orientations)
    assert c.mode[1] == "tta" and c.members[1] == 1
    np.testing.assert_allclose(c.orig[1], _log_softmax(o0[1:2])[0], atol=1e-6)
    # row 2: member 0 never reached it → member 1 sets the row
    assert c.mode[2] == "tta" and c.members[2] == 1 and c.reason[2] is None
    # row 3: both single → averaged, no swap
    assert c.mode[3] == "single" and c.members[3] == 2 and np.isnan(c.swap[3]).all()
    # row 4: nobody → the first member's reason stands
    assert c.mode[4] is None and c.members[4] == 0 and c.reason[4] == "not reached: time budget"
    assert c.members.tolist() == [2, 1, 1, 2, 0]
    assert c.error == "fold1: 1 student chunk(s) failed (first: X)" and c.nonfinite_rows == 2
    assert [ch["member"] for ch in c.chunks] == ["fold0", "fold1"]


def test_combine_passes_keeps_rows_run_at_another_length_apart():
    o = np.zeros((1, 3), dtype=np.float32)
    a, b = _pass(1, ["short"], o, length=64), _pass(1, ["short"], o + np.array([[1, 0, 0]], np.float32), length=96)
    c = combine_passes([a, b])
    assert c.max_length[0] == 64 and c.members[0] == 1


def test_combine_passes_leaves_a_single_pass_as_it_is():
    o = np.ones((2, 3), dtype=np.float32)
    p = _pass(2, ["tta", None], o, o)
    c = combine_passes([p])
    assert c is p and c.members.tolist() == [1, 0]
    np.testing.assert_array_equal(c.orig[0], o[0])  # raw logits, untouched


def test_export_members_reads_the_manifest(tmp_path):
    assert export_members(tmp_path) == [tmp_path]  # no manifest: one export
    (tmp_path / ENSEMBLE_FILE).write_text(json.dumps({"members": ["fold0", "fold1"]}))
    with pytest.raises(UserError, match="fold0"):  # a member without its export.json
        export_members(tmp_path)
    for m in ("fold0", "fold1"):
        (tmp_path / m).mkdir()
        (tmp_path / m / "export.json").write_text("{}")
    assert export_members(tmp_path) == [tmp_path / "fold0", tmp_path / "fold1"]
    (tmp_path / ENSEMBLE_FILE).write_text(json.dumps({"members": []}))
    with pytest.raises(UserError, match="no members"):
        export_members(tmp_path)


# --------------------------------------------------------------------------- submission with fake members


class ShiftedBackend(FakeBackend):
    """A second fold model: the first one's logits plus a fixed shift (so the average is checkable)."""

    SHIFT = np.array([0.0, 0.9, 0.3], dtype=np.float32)

    def predict(self, df, **kw):
        orig, swap = super().predict(df, **kw)
        return orig + self.SHIFT, (None if swap is None else swap + self.SHIFT[[1, 0, 2]])


def _ensemble_dir(tmp_path) -> Path:
    d = tmp_path / "ens"
    for m in ("fold0", "fold1"):
        (d / m).mkdir(parents=True)
        (d / m / "export.json").write_text("{}")
    (d / ENSEMBLE_FILE).write_text(json.dumps({"members": ["fold0", "fold1"]}))
    return d


def _run_ensemble(artifacts, tmp_path, monkeypatch, backends, budget="8h", chunk_rows=None):  # noqa: F811
    cfg = artifacts["cfg"].model_copy(deep=True)
    cfg.submission.student_dir = str(_ensemble_dir(tmp_path))
    cfg.submission.chunk_rows = chunk_rows or cfg.submission.chunk_rows
    loaded = []

    def load(export_dir, **kw):
        loaded.append(Path(export_dir).name)
        b = backends[Path(export_dir).name]
        if isinstance(b, Exception):
            raise b
        return b

    monkeypatch.setattr(run_mod, "load_student", load)
    seen = []
    real = artifacts["stacker"].predict
    artifacts["stacker"].predict = lambda df, student: (seen.append(student), real(df, student))[1]
    run_mod.run_submission(cfg, out=str(artifacts["out"]), progress=False, clock=artifacts["clock"],
                           time_budget=budget)
    paths = pd.read_csv(artifacts["out"].with_name("submission.paths.csv"), dtype={"id": str})
    run = json.loads(artifacts["out"].with_name("submission.run.json").read_text())
    return loaded, seen, paths, run


def test_submission_averages_the_members(artifacts, tmp_path, monkeypatch):  # noqa: F811
    clock = artifacts["clock"]
    loaded, seen, paths, run = _run_ensemble(artifacts, tmp_path, monkeypatch,
                                             {"fold0": FakeBackend(clock), "fold1": ShiftedBackend(clock)})
    assert loaded == ["fold0", "fold1"]  # one after the other
    assert set(paths["student"]) == {"tta"} and set(paths["members"]) == {2}
    student = [s for s in seen if s is not None][0]
    src = run_mod._read_test(str(artifacts["test"]))  # the rows as the submission reads them (turns as lists)
    one = FakeBackend(clock)
    orig0, swap0 = one.predict(src, max_length=96, tta=True, tokens_per_batch=10**6, max_batch_size=64)
    # the stacker got the members' mean log-softmax per orientation, rows in the test file's order
    np.testing.assert_allclose(student["orig"], mean_log_softmax([orig0, orig0 + ShiftedBackend.SHIFT]), atol=1e-5)
    np.testing.assert_allclose(student["swap"], mean_log_softmax([swap0, swap0 + ShiftedBackend.SHIFT[[1, 0, 2]]]),
                               atol=1e-5)
    assert {h["member"] for h in run["governor"]} == {"fold0", "fold1"}
    assert run["student_error"] is None


def test_a_member_that_fails_to_load_costs_only_its_share(artifacts, tmp_path, monkeypatch):  # noqa: F811
    clock = artifacts["clock"]
    loaded, seen, paths, run = _run_ensemble(artifacts, tmp_path, monkeypatch,
                                             {"fold0": RuntimeError("disk gone"), "fold1": ShiftedBackend(clock)})
    assert loaded == ["fold0", "fold1"] and set(paths["members"]) == {1} and set(paths["head"]) == {"stacker"}
    assert "fold0" in run["student_error"] and "disk gone" in run["student_error"]


def test_each_member_gets_its_share_of_the_time(artifacts, tmp_path, monkeypatch):  # noqa: F811
    """A budget one TTA pass of one model would fill: the first member may use only half of it, so it degrades
    (it would not on its own), and the second member still runs."""
    clock = artifacts["clock"]
    f0, f1 = FakeBackend(clock, sec_per_token=0.0), ShiftedBackend(clock, sec_per_token=0.0)
    tokens = float(f0.lengths(run_mod._read_test(str(artifacts["test"])), 96).sum())
    spt = 1.0 / tokens  # one pass over every row = 1 s; TTA = 2 s
    f0.spt = f1.spt = spt
    cfg_reserve = artifacts["cfg"].submission.reserve_s
    budget = f"{int(cfg_reserve + 3)}s"  # 3 usable s: TTA by both members (4 s) cannot fit, 1.5 s each
    _, _, paths, run = _run_ensemble(artifacts, tmp_path, monkeypatch, {"fold0": f0, "fold1": f1}, budget=budget,
                                     chunk_rows=4)
    modes0 = {h["mode"] for h in run["governor"] if h["member"] == "fold0"}
    assert "tta" in modes0 and (modes0 - {"tta"})  # started in TTA, then degraded within its share
    assert f1.calls, "the second member must still get time"
    assert (paths["members"] == 2).any()


# --------------------------------------------------------------------------- planner and twin


def test_planner_counts_every_member_and_offers_one_model():
    from arena_kd.planner.plan import build_plan

    base = [f"data.train={ROOT / 'data/sample/train.csv'}", "submission.expected_test_rows=25000"]
    one = build_plan(load_config(ROOT / "configs/kaggle-gemma2.yaml", base), test=str(ROOT / "data/sample/test.csv"),
                     calibration={})
    cfg = load_config(ROOT / "configs/kaggle-gemma2.yaml", [*base, "student.final=fold_ensemble"])
    ens = build_plan(cfg, test=str(ROOT / "data/sample/test.csv"), calibration={})
    k = cfg.folds.n_folds
    assert ens.submission[1].passes == k * one.submission[1].passes
    assert ens.submission[1].stage.endswith(f"({k} fold models)")
    assert ens.submission[0].seconds[1] == pytest.approx(k * one.submission[0].seconds[1])  # k loads
    alt = next(a for a in ens.alternatives if a["change"] == {"members": 1})
    assert alt["expected_s"] == pytest.approx(one.total[1])


def test_hard_twin_of_a_fold_ensemble_is_a_fold_ensemble(tmp_path):
    from arena_kd.pipeline import hard_student_config

    cfg = load_config(SMOKE, [f"workdir={tmp_path}", "student.final=fold_ensemble"])
    hard = hard_student_config(cfg)
    assert hard.student.final == "fold_ensemble" and hard.student.oof and hard.student.distill.alpha == 0
    assert not hard_student_config(load_config(SMOKE, [f"workdir={tmp_path}"])).student.oof  # full: final only


# --------------------------------------------------------------------------- the real path (tiny Gemma2)


def test_real_fold_ensemble_export_evaluation_and_switch_back(tmp_path):
    """distill with final=fold_ensemble exports each fold student as a member verified against its own fold model;
    the evaluation's logits are the members' mean log-softmax; switching to final=full replaces the ensemble."""
    import arena_kd.student.run as srun
    from arena_kd.common.io import read_keyed_table
    from arena_kd.heldout import student_test_logits
    from arena_kd.kfold.runner import fold_path
    from arena_kd.llm.export import load_export, reference_logits
    from arena_kd.llm.predict import predict_tta
    from arena_kd.student.soup import adapter_logits
    from arena_kd.submission.tolerant_reader import read_test_pairs

    sets = [f"workdir={tmp_path / 'work'}", "data.max_rows=24", "student.distill.alpha=0",
            "student.final=fold_ensemble", "student.reference_rows=4"]
    cfg = load_config(SMOKE, sets)
    summary = srun.run_distill(cfg)
    export = Path(summary["export_dir"])
    members = export_members(export)
    assert [m.name for m in members] == ["fold0", "fold1"] and (export / "config.resolved.yaml").is_file()
    from arena_kd.planner.lengths import local_tokenizer

    tok, where = local_tokenizer(cfg)  # the planner counts tokens with the first member's tokenizer
    assert tok is not None and "fold0" in where
    sdir = tmp_path / "work" / "student"
    for k, m in enumerate(members):
        settings = json.loads((m / "export.json").read_text())
        assert settings["member"] == f"fold{k}" and settings["final"] == "fold_ensemble"
        assert settings["verify"]["none"]["ok"]
        ref = pd.read_parquet(m / "reference_logits.parquet")
        ids = [list(r) for r in ref["input_ids"]]
        adapter = read_keyed_table(fold_path(sdir, k))[1]["adapter_dir"]
        want = adapter_logits(cfg.student.model, adapter, ids, cfg.workdir)  # its own fold model
        np.testing.assert_allclose(ref[["logit_a", "logit_b", "logit_tie"]].to_numpy(), _log_softmax(want),
                                   atol=1e-4)
    test = read_test_pairs(str(ROOT / "data/sample/test.csv")).head(6).reset_index(drop=True)
    got = student_test_logits(export, test, cfg)
    assert got["members"] == 2  # named in the report's note
    outs = []
    for m in members:
        model, tok, st = load_export(m, dtype="fp32", device="cpu")
        r = st["render"]
        outs.append(predict_tta(model, tok, test, max_length=r["max_length"], truncation=r["truncation"],
                                prompt_fraction=r["prompt_fraction"], template=r.get("template", "blocks")))
    np.testing.assert_allclose(got["orig"], mean_log_softmax([o["orig"] for o in outs]), atol=1e-5)
    np.testing.assert_allclose(got["swap"], mean_log_softmax([o["swap"] for o in outs]), atol=1e-5)
    assert not np.allclose(outs[0]["orig"], outs[1]["orig"], atol=1e-4)  # two different models were averaged
    # a rerun finds every member up to date; final=full (a changed final mode needs --force, like any other change of
    # a finished stage's settings) then replaces the ensemble with one export
    before = [(m / "export.json").stat().st_mtime_ns for m in members]
    assert srun.run_distill(cfg)["export_dir"] == str(export)
    assert [(m / "export.json").stat().st_mtime_ns for m in members] == before
    full = load_config(SMOKE, [*sets[:-2], "student.final=full", "student.reference_rows=4"])
    srun.run_distill(full, force=True)
    assert export_members(export) == [export] and not (export / ENSEMBLE_FILE).exists()
    model, _, _ = load_export(export, dtype="fp32", device="cpu")
    ref = pd.read_parquet(export / "reference_logits.parquet")
    assert np.isfinite(reference_logits(model, [list(r) for r in ref["input_ids"]])).all()


@pytest.mark.parametrize("final,what", [("fold_ensemble", "fold students"), ("fold_soup", "fold adapters")])
def test_a_fold_final_without_fold_students_is_refused_when_the_config_loads(tmp_path, final, what):
    with pytest.raises(UserError, match=f"student: .*final={final} needs the {what}: set student.oof=true"):
        load_config(SMOKE, [f"workdir={tmp_path / 'work'}", f"student.final={final}", "student.oof=false"])
    ok = load_config(SMOKE, [f"workdir={tmp_path / 'work'}", f"student.final={final}"])
    with pytest.raises(ValueError, match="needs the"):  # assignments are validated too
        ok.student.oof = False


def test_report_compares_the_distilled_and_hard_fold_students_out_of_fold(tmp_path):
    """With fold students on both sides, the report adds (b) out of fold: paired, on every training row, per source."""
    from arena_kd.common.io import write_keyed_table
    from arena_kd.kfold.training_data import load_training_data
    from arena_kd.oof_report import twin_oof_comparison, twin_pair, twin_section
    from arena_kd.pipeline import hard_student_config

    cfg = load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "student.final=fold_ensemble"])
    hard = hard_student_config(cfg)
    frame = load_training_data(cfg).frame
    y = frame["label"].to_numpy(dtype=np.int64)
    good = np.full((len(y), 3), -1.0)
    good[np.arange(len(y)), y] = 1.0  # right on every row: log loss ~0.24
    for c, z in ((cfg, good), (hard, np.zeros((len(y), 3)))):  # the twin: uniform, log 3
        df = pd.DataFrame({"id": frame["id"].astype(str), "fold": frame["fold"]})
        for j, col in enumerate(("logit_a", "logit_b", "logit_tie")):
            df[col] = z[:, j]
        write_keyed_table(c.workdir_path / "student" / "oof.parquet", df, {})
    got = twin_oof_comparison(twin_pair(cfg, hard), cfg.seed)
    sources = sorted(set(frame["source"]))
    assert list(got) == ["all", *sources] and sum(got[s]["rows"] for s in sources) == got["all"]["rows"] == len(y)
    assert got["all"]["b"] == pytest.approx(np.log(3)) and got["all"]["hi"] < 0
    assert "distilled better" in twin_section(got)
    (hard.workdir_path / "student" / "oof.parquet").unlink()
    assert twin_oof_comparison(twin_pair(cfg, hard), cfg.seed) is None  # a twin without fold students: no section


def test_reading_the_members_needs_no_torch():
    """The planner and the submission's fallback path stay torch-free: listing an export's members too."""
    import subprocess
    import sys

    code = ("import sys, arena_kd.llm.export_members, arena_kd.planner.lengths, arena_kd.submission.ensemble; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
