"""Issue 22's hostile-input probe, stacker side: every fitted parameter read back from a stacker folder is checked
(temperature, prior, model file inside the folder); a model that fails is not used and its rows go to the best
remaining candidate by out-of-fold log loss; without any usable stacker the raw student answers only when its
out-of-fold log loss beats the class prior's.

One real stacker folder is trained per module (tests/test_stacking_run.py's helpers, 160 rows) on a deliberately
confident, uninformative student: its raw softmax is far worse than the prior out of fold, as in the probe (1.08 vs
0.96).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_stacking_run import _cfg, _soft_uniform, _training_frame, _write_student_oof
from test_submission import N_ROWS, FakeBackend, FakeClock, _assert_valid

from arena_kd.blend.stacker import load_stacker
from arena_kd.common.metrics import log_loss
from arena_kd.submission import run as run_mod
from arena_kd.submission.fallback import fallback_losses, student_beats_prior

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from arena_kd.stacking.run import run_stacking

    tmp = tmp_path_factory.mktemp("stack")
    cfg = _cfg(tmp)
    frame = _training_frame(cfg)
    rng = np.random.default_rng(0)
    z = rng.normal(scale=4.0, size=(len(frame), 3))  # confident noise: the raw student loses to the prior
    _write_student_oof(cfg, frame, {"orig": z, "swap": z + rng.normal(scale=0.3, size=z.shape)})
    _soft_uniform(cfg, frame)
    manifest = run_stacking(cfg)
    return cfg, manifest


@pytest.fixture()
def folder(trained, tmp_path):
    """A copy of the trained stacker folder, free to damage; edit(fn) rewrites its stacker.json."""
    cfg, manifest = trained
    d = tmp_path / "stacking"
    shutil.copytree(cfg.workdir_path / "stacking", d)

    def edit(fn):
        m = json.loads((d / "stacker.json").read_text())
        fn(m)
        (d / "stacker.json").write_text(json.dumps(m))

    return d, manifest, edit


def _test_frame(n: int = 12) -> pd.DataFrame:
    from arena_kd.data.readers import read_pairs

    return read_pairs(ROOT / "data/sample/test.csv").head(n).reset_index(drop=True)


def _next_best(manifest: dict, mode: str, without: set[str]) -> str:
    rows = sorted(manifest["candidates"][mode], key=lambda r: r["log_loss"])
    return next(r["name"] for r in rows if r["name"] not in without and manifest["models"].get(r["name"]))


@pytest.mark.parametrize("temperature", [-1.0, 0.0, float("nan"), 1e6, "hot"])
def test_out_of_range_temperature_is_not_used(folder, temperature):
    """Was: a negative temperature was accepted and flipped the answers."""
    d, manifest, edit = folder
    name = manifest["selection"]["none"]
    edit(lambda m: m["models"][name].update(temperature=temperature))
    stacker = load_stacker(d)
    assert name in stacker.unusable and "temperature" in stacker.unusable[name]
    best = _next_best(manifest, "none", {name})
    assert stacker.chosen("none") == best
    np.testing.assert_allclose(stacker.predict_features_only(_test_frame()),
                               stacker.predict_model(_test_frame(), best))


@pytest.mark.parametrize("damage", ["prior probs", "model file outside", "model file absolute", "wrong features"])
def test_other_parameters_out_of_range_are_not_used(folder, tmp_path, damage):
    d, manifest, edit = folder
    lgb_name = next(n for n, s in manifest["models"].items() if s and s["kind"] == "lightgbm")
    if damage == "prior probs":
        name, want = "prior", "prior probs"
        edit(lambda m: m["models"]["prior"].update(probs=[1.5, -0.5, 0.0]))
    elif damage in ("model file outside", "model file absolute"):
        name, want = lgb_name, "leaves the stacker folder"
        outside = tmp_path / "outside.txt"
        shutil.copy(d / manifest["models"][lgb_name]["model_file"], outside)  # a valid booster, out of the folder
        rel = "../outside.txt" if damage == "model file outside" else str(outside)
        edit(lambda m: m["models"][lgb_name].update(model_file=rel))
    else:
        name, want = lgb_name, "features, stacker.json lists"
        edit(lambda m: m["models"][lgb_name].update(features=m["models"][lgb_name]["features"][:-1]))
    stacker = load_stacker(d)
    assert want in stacker.unusable[name]
    for mode in ("tta", "single", "none"):
        assert stacker.chosen(mode) != name


def test_broken_stacker_falls_back_to_the_prior_not_the_worse_raw_student(trained, folder, tmp_path, monkeypatch):
    """Was: stacker broken → every student row answered by the raw student softmax, whose OOF log loss is worse than
    the class prior's. The stacking stage's oof.parquet says which is better; the prior wins here."""
    cfg, _ = trained
    d, _, _ = folder
    (d / "stacker.json").write_text("{ truncated")
    losses, source = fallback_losses(d, cfg.workdir_path / "student" / "oof.parquet", cfg.data.train)
    assert source.endswith("oof.parquet") and losses["student_softmax"]["tta"] > losses["prior"]["tta"]
    clock = FakeClock()
    monkeypatch.setattr(run_mod, "load_student", lambda *a, **k: FakeBackend(clock))
    test = tmp_path / "input" / "test.csv"
    test.parent.mkdir()
    pd.read_csv(ROOT / "data/sample/test.csv", dtype=str).head(N_ROWS).to_csv(test, index=False)
    c = cfg.model_copy(deep=True)
    c.submission.stack_dir = str(d)
    out = tmp_path / "out" / "submission.csv"
    res = run_mod.run_submission(c, test=str(test), out=str(out), progress=False, clock=clock)
    _assert_valid(out, pd.read_csv(test, dtype=str)["id"].tolist())
    assert res.counts == {"prior+none": N_ROWS}
    choice = json.loads(out.with_name("submission.run.json").read_text())["no_stacker_choice"]
    assert choice["tta"].startswith("class prior (out-of-fold log loss")


def test_raw_student_is_used_only_when_its_oof_beats_the_prior(tmp_path):
    """From the student stage's OOF and the training labels (no stacking stage): a good student is used, a missing
    OOF is no evidence (the prior answers)."""
    from arena_kd.common.io import write_keyed_table
    from arena_kd.data.readers import read_labels

    train = ROOT / "data/sample/train.csv"
    labels = read_labels(train).head(200)
    z = np.zeros((len(labels), 3))
    z[np.arange(len(labels)), labels["label"].to_numpy()] = 2.0  # knows the label
    oof = pd.DataFrame({"id": labels["id"].astype(str)})
    for j, c in enumerate(("a", "b", "tie")):
        oof[f"logit_{c}"] = z[:, j]
        oof[f"orig_logit_{c}"] = z[:, j]
    write_keyed_table(tmp_path / "oof.parquet", oof, {})
    losses, source = fallback_losses(tmp_path / "no-stacking", tmp_path / "oof.parquet", str(train))
    assert source == str(tmp_path / "oof.parquet")
    y = labels["label"].to_numpy()
    assert losses["student_softmax"]["tta"] == pytest.approx(log_loss(y, np.exp(z) / np.exp(z).sum(1, keepdims=True)))
    assert student_beats_prior(losses, "tta")[0] and student_beats_prior(losses, "single")[0]
    none, src = fallback_losses(tmp_path / "no-stacking", tmp_path / "missing.parquet", str(train))
    assert src == "none" and not student_beats_prior(none, "tta")[0]
