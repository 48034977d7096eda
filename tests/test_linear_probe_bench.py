"""benchmarks/linear_probe*: the swap-symmetric pair probe learns a preference direction from embeddings, one probe per
source learns two opposite directions that a pooled probe cannot, the router sends rows to their source's probe, C is
chosen on the training rows only, and the report's section and verdicts (synthetic embeddings: no model loaded)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arena_kd.common.metrics import log_loss, own_mean  # noqa: E402
from benchmarks import linear_probe as lp  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pairs(n: int, direction: np.ndarray, rng, *, offset: np.ndarray | None = None, tie_margin: float = 0.05):
    """Unit embeddings whose label follows ``direction``·(a − b): A above the margin, B below, tie inside it."""
    d = len(direction)
    shift = np.zeros(d) if offset is None else offset
    a, b, p = (_unit(rng.normal(size=(n, d)) + shift) for _ in range(3))
    score = (a - b) @ direction
    y = np.where(score > tie_margin, 0, np.where(score < -tie_margin, 1, 2))
    return {"a": a, "b": b, "p": p, "y": y}


def _split(d: dict, n_fit: int) -> tuple[dict, dict]:
    return {k: v[:n_fit] for k, v in d.items()}, {k: v[n_fit:] for k, v in d.items()}


def test_pair_features_flip_their_antisymmetric_part_under_a_swap():
    rng = np.random.default_rng(0)
    a, b, p = (_unit(rng.normal(size=(5, 8))) for _ in range(3))
    ab, ba = lp.pair_features(a, b, p), lp.pair_features(b, a, p)
    assert ab.shape == (5, 17)
    np.testing.assert_allclose(ab[:, :9], -ba[:, :9])  # e_A - e_B and the prompt-relative score
    np.testing.assert_allclose(ab[:, 9:], ba[:, 9:])  # |e_A - e_B|


def test_probe_is_swap_symmetric_and_ranks_rows_better_than_its_own_mean():
    rng = np.random.default_rng(1)
    direction = _unit(rng.normal(size=(1, 16)))[0]
    fit, held = _split(_pairs(1200, direction, rng), 800)
    probe = lp.PairProbe(c=1.0).fit(fit["a"], fit["b"], fit["p"], fit["y"])
    probs = probe.predict(held["a"], held["b"], held["p"])
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probe.predict(held["b"], held["a"], held["p"])[:, lp.SWAP], probs, atol=1e-12)
    # learned the direction: far better on unseen rows than predicting its own class mix for every row
    assert log_loss(held["y"], probs) < log_loss(held["y"], own_mean(probs)) - 0.2


def test_a_probe_fitted_without_ties_gives_the_tie_column_zero():
    rng = np.random.default_rng(2)
    d = _pairs(300, _unit(rng.normal(size=(1, 8)))[0], rng, tie_margin=0.0)
    assert 2 not in set(d["y"])
    probs = lp.PairProbe(c=1.0).fit(d["a"], d["b"], d["p"], d["y"]).predict(d["a"], d["b"], d["p"])
    assert np.all(probs[:, 2] == 0.0)
    np.testing.assert_allclose(probs.sum(1), 1.0)


def _two_sources(rng, n: int = 700) -> tuple[dict, dict]:
    """Source x prefers the answer along +u, source y along -u; their prompts sit apart (the router can tell them)."""
    d = 16
    u = _unit(rng.normal(size=(1, d)))[0]
    away = np.zeros(d)
    away[0] = 3.0
    x, y = _pairs(n, u, rng, offset=away), _pairs(n, -u, rng, offset=-away)
    both = {k: np.concatenate([x[k], y[k]]) for k in x}
    both["source"] = np.array(["x"] * n + ["y"] * n)
    both["prompt"] = np.arange(2 * n)
    both["lengths"] = rng.normal(size=(2 * n, 4)) + np.where(both["source"] == "x", 2.0, -2.0)[:, None]
    order = rng.permutation(2 * n)
    both = {k: v[order] for k, v in both.items()}
    return _split(both, int(1.4 * n))


def test_per_source_probes_learn_opposite_directions_that_a_pooled_probe_cannot():
    rng = np.random.default_rng(3)
    train, test = _two_sources(rng)
    held_y = test.pop("y")
    losses = {}
    for variant in ("pooled", "per-source", "routed"):  # pooled-distilled: below, with a teacher's soft labels
        probs = lp.fit_predict(variant, 1.0, train, test)
        np.testing.assert_allclose(probs.sum(1), 1.0)
        losses[variant] = log_loss(held_y, probs) - log_loss(held_y, own_mean(probs))
    assert losses["per-source"] < -0.2
    assert losses["routed"] < -0.2  # the prompts tell the sources apart: routing recovers the per-source probes
    assert losses["pooled"] > -0.05  # +u and -u cancel: one probe ranks neither source


def test_router_weights_each_prompt_once_and_sends_rows_to_their_source():
    rng = np.random.default_rng(4)
    train, test = _two_sources(rng)
    route = lp.source_router(train["lengths"], train["source"], train["prompt"])
    classes, q = route(test["lengths"])
    assert classes == ["x", "y"]
    np.testing.assert_allclose(q.sum(1), 1.0)
    assert np.mean(np.asarray(classes)[q.argmax(1)] == test["source"]) > 0.95
    # one prompt repeated over many rows weighs as much as one row: 300 copies of a y-row do not pull x-rows over
    heavy = {k: np.concatenate([v, np.repeat(v[train["source"] == "y"][:1], 300, axis=0)]) for k, v in train.items()}
    _, q_heavy = lp.source_router(heavy["lengths"], heavy["source"], heavy["prompt"])(test["lengths"])
    assert np.abs(q_heavy - q).max() < 0.05


def test_length_features_are_swap_invariant_sizes():
    import pandas as pd

    frame = pd.DataFrame({"prompt": [["hi", "again"], ["q"]], "response_a": [["a" * 99], ["b"]],
                          "response_b": [["c" * 9], ["d" * 999]]})
    swapped = frame.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    x = lp.length_features(frame)
    np.testing.assert_allclose(x, lp.length_features(swapped))
    np.testing.assert_allclose(x[0], [np.log1p(len("hi\n\nagain")), np.log(100) + np.log(10), np.log(10), np.log(2)])


def test_choose_c_uses_only_the_training_rows_and_returns_a_grid_value():
    rng = np.random.default_rng(5)
    train, _ = _two_sources(rng, n=200)
    groups = np.arange(len(train["y"])) // 2
    c, cv = lp.choose_c("per-source", train, groups)
    assert c in lp.C_GRID
    assert set(cv) == {f"{g:g}" for g in lp.C_GRID}
    assert cv[f"{c:g}"] == min(cv.values())
    assert lp.choose_c("per-source", train, groups) == (c, cv)  # deterministic


def _record(max_length: int, variant: str, hh: list[float], mt: list[float], mix: list[float]) -> dict:
    per = {"hh_harmless": {"logloss": 0.67, "constant": 0.69, "vs_own_mean": hh},
           "mtbench_human": {"logloss": 1.03, "constant": 1.07, "vs_own_mean": mt}}
    return {"model": "m", "max_length": max_length, "variant": variant, "C": 0.1, "logloss": 0.8, "ci": [0.7, 0.9],
            "prior": 0.92, "vs_prior": [-0.1, -0.2, -0.05], "vs_source_constants": mix, "per_source": per,
            "embed_s": 10.0, "fit_s": 2.0, **({"router_accuracy": 0.8} if variant == "routed" else {})}


def test_report_section_names_where_each_variant_ranks_the_rows(tmp_path, monkeypatch):
    from benchmarks import linear_probe_report as rep

    monkeypatch.setattr(rep, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(rep, "SECTION_MD", tmp_path / "lp.md")
    log = tmp_path / "lp.jsonl"
    recs = [_record(128, "pooled", [0.01, -0.01, 0.02], [0.0, -0.02, 0.02], [0.01, -0.01, 0.03]),
            _record(512, "per-source", [-0.02, -0.04, -0.01], [-0.04, -0.08, -0.01], [-0.03, -0.05, -0.01]),
            _record(512, "routed", [-0.02, -0.04, -0.01], [0.05, 0.01, 0.1], [0.01, -0.01, 0.02]),
            # a rerun of the first point replaces it
            _record(128, "pooled", [0.0, -0.01, 0.01], [0.0, -0.02, 0.02], [0.01, -0.01, 0.03])]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\nkept\n")
    rep.write_report(log)
    rep.write_report(log)  # idempotent: one section
    text = (tmp_path / "RESULTS.md").read_text()
    assert "kept" in text and text.count(rep.BEGIN) == 1
    # records written before the cross-encoder inputs read as the separate-text input over the full backbone
    assert "- **separate (6 layers), pooled**: ranks the rows (tokens) on HH at none; MT at none" in text
    assert "- **separate (6 layers), per-source**: ranks the rows (tokens) on HH at 512 (-0.0200); MT at 512 " \
           "(-0.0400); beats the per-source constants on the mix at 512" in text
    assert "- **separate (6 layers), routed**: ranks the rows (tokens) on HH at 512 (-0.0200); MT at none" in text
    rows = [line for line in text.splitlines() if line.startswith("| separate (6) |")]
    assert len(rows) == 3
    assert "| 80% |" in rows[-1] and rows[0].count("—") == 1  # router accuracy only for the routed variant


@pytest.mark.parametrize("variant", ["nonsense"])
def test_an_unknown_variant_is_refused(variant):
    rng = np.random.default_rng(6)
    train, test = _two_sources(rng, n=50)
    with pytest.raises(ValueError, match="unknown variant"):
        lp.fit_predict(variant, 1.0, train, test)


class _HashEmbedder:
    """A stand-in for blend.embeddings.SentenceEmbedder: a fixed random unit vector per text (no model)."""

    def __init__(self, *args, **kwargs):
        pass

    def encode(self, texts):
        import zlib

        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_oof_logits_are_out_of_fold_and_readable_as_an_offline_teacher(tmp_path, monkeypatch):
    import pandas as pd

    from arena_kd.blend import embeddings
    from arena_kd.kfold.oof import read_teacher_logits
    from benchmarks import learning_curve as lc

    monkeypatch.setattr(embeddings, "SentenceEmbedder", _HashEmbedder)
    train, test, groups = lc.load_data(10**9, 42)
    folds = pd.DataFrame({"id": train["id"].astype(str), "fold": np.arange(len(train)) % 2})
    folds.to_csv(tmp_path / "folds.csv", index=False)

    def run(frame, name):
        monkeypatch.setattr(lc, "load_data", lambda rows, seed: (frame, test, groups))
        lp.write_oof(tmp_path / name, tmp_path / "folds.csv", 64, 0.3, 42)
        return pd.read_parquet(tmp_path / name)

    first = run(train, "a.parquet")
    assert list(first["id"]) == list(train["id"].astype(str))
    probs = first[["prob_a", "prob_b", "prob_tie"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs.min() >= 1e-4 * 0.99  # HH's probe gives no ties: floored, so the teacher's logs stay finite
    # fold 0's predictions never saw fold 0's labels: relabelling those rows changes fold 1's predictions only
    relabelled = train.copy()
    in_fold0 = (np.arange(len(train)) % 2 == 0)
    relabelled.loc[in_fold0, "label"] = (relabelled.loc[in_fold0, "label"].astype(int) + 1) % 2
    second = run(relabelled, "b.parquet")
    np.testing.assert_allclose(second.loc[in_fold0, ["prob_a", "prob_b", "prob_tie"]].to_numpy(), probs[in_fold0])
    assert not np.allclose(second.loc[~in_fold0, ["prob_a", "prob_b", "prob_tie"]].to_numpy(), probs[~in_fold0])
    table, kind = read_teacher_logits(tmp_path / "a.parquet")
    assert kind == "probabilities" and len(table) == len(train)


def test_the_benchmark_runner_keeps_the_probe_section_between_its_markers(tmp_path, monkeypatch):
    from benchmarks import linear_probe_report as rep
    from benchmarks import run_all

    monkeypatch.setattr(rep, "SECTION_MD", tmp_path / "missing.md")
    assert "Not run yet" in run_all._linear_probe_section()
    (tmp_path / "lp.md").write_text("## Linear probe\n\nbody\n")
    monkeypatch.setattr(rep, "SECTION_MD", tmp_path / "lp.md")
    text = run_all._linear_probe_section()
    assert text.startswith(rep.BEGIN) and "body" in text and text.rstrip().endswith(rep.END)


def test_soft_fit_with_one_hot_targets_is_the_hard_fit():
    rng = np.random.default_rng(7)
    d = _pairs(400, _unit(rng.normal(size=(1, 8)))[0], rng)
    hard = lp.PairProbe(c=0.5).fit(d["a"], d["b"], d["p"], d["y"]).predict(d["a"], d["b"], d["p"])
    soft = lp.PairProbe(c=0.5).fit(d["a"], d["b"], d["p"], soft=np.eye(3)[d["y"]]).predict(d["a"], d["b"], d["p"])
    np.testing.assert_allclose(soft, hard, atol=1e-6)


def test_pooled_distilled_fits_the_teachers_probabilities_not_the_hard_labels():
    rng = np.random.default_rng(8)
    direction = _unit(rng.normal(size=(1, 16)))[0]
    d = _pairs(1500, direction, rng)
    held_y = d["y"][1000:].copy()
    # the teacher knows the direction; the hard labels the student's twin sees are noise
    teacher = lp.PairProbe(c=1.0).fit(d["a"][1000:], d["b"][1000:], d["p"][1000:], held_y)
    d["soft"] = teacher.predict(d["a"], d["b"], d["p"])
    d["y"] = rng.integers(0, 3, size=len(d["y"]))
    fit, held = _split(d, 1000)
    ranked = {}
    for variant in ("pooled", "pooled-distilled"):
        probs = lp.fit_predict(variant, 1.0, fit, held)
        ranked[variant] = log_loss(held_y, probs) - log_loss(held_y, own_mean(probs))
    assert ranked["pooled-distilled"] < -0.2 and ranked["pooled"] > -0.05


def test_teacher_soft_labels_are_out_of_fold():
    rng = np.random.default_rng(9)
    train, _ = _two_sources(rng, n=200)
    groups = np.arange(len(train["y"])) // 2
    soft = lp.teacher_soft_labels(train, groups, 0.3)
    np.testing.assert_allclose(soft.sum(1), 1.0)
    from sklearn.model_selection import GroupKFold

    (_, first), _ = list(GroupKFold(n_splits=2).split(train["a"], groups=groups))
    relabelled = dict(train, y=train["y"].copy())
    relabelled["y"][first] = (relabelled["y"][first] + 1) % 3  # the first fold's labels change ...
    again = lp.teacher_soft_labels(relabelled, groups, 0.3)
    np.testing.assert_allclose(again[first], soft[first])  # ... its own soft labels do not (fitted on the other)
    rest = np.setdiff1d(np.arange(len(soft)), first)
    assert not np.allclose(again[rest], soft[rest])


def test_twin_differences_are_paired_on_the_mix_and_each_source():
    import pandas as pd

    y = np.array([0, 1, 0, 1, 2, 0])
    test = pd.DataFrame({"label": y, "source": ["x", "x", "x", "y", "y", "y"]})
    good = np.full((6, 3), 0.1)
    good[np.arange(6), y] = 0.8
    flat = np.full((6, 3), 1 / 3)
    out = lp.twin_differences(test, np.arange(6), good, flat, seed=0)
    assert set(out) == {"mix", "x", "y"}
    assert out["mix"][0] == pytest.approx(log_loss(y, good) - log_loss(y, flat))
    assert out["x"][0] == pytest.approx(log_loss(y[:3], good[:3]) - log_loss(y[:3], flat[:3]))
    assert all(v[2] < 0 for v in out.values())  # better on every row: the whole interval below zero


def test_report_states_the_distilled_probe_against_its_twin(tmp_path, monkeypatch):
    from benchmarks import linear_probe_report as rep

    monkeypatch.setattr(rep, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(rep, "SECTION_MD", tmp_path / "lp.md")
    rec = _record(512, "pooled-distilled", [-0.02, -0.03, -0.01], [0.0, -0.02, 0.02], [0.07, 0.04, 0.1])
    rec["vs_hard_twin"] = {"mix": [-0.0144, -0.0266, -0.0028], "hh_harmless": [-0.013, -0.0259, -0.0004],
                           "mtbench_human": [-0.0169, -0.044, 0.008]}
    (tmp_path / "lp.jsonl").write_text(json.dumps(rec) + "\n")
    rep.write_report(tmp_path / "lp.jsonl")
    text = (tmp_path / "lp.md").read_text()
    assert ("separate (6), 512 tokens: mix **-0.0144** [-0.0266, -0.0028], HH **-0.0130** [-0.0259, -0.0004], "
            "MT -0.0169 [-0.0440, +0.0080]") in text


def test_report_keeps_each_input_apart_and_lists_the_cross_encoder_after_the_separate_texts(tmp_path, monkeypatch):
    from benchmarks import linear_probe_report as rep

    monkeypatch.setattr(rep, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(rep, "SECTION_MD", tmp_path / "lp.md")
    flat, ranks = [0.0, -0.01, 0.01], [-0.03, -0.05, -0.01]
    recs = [{**_record(256, "per-source", flat, flat, flat), "input": "cross-segment", "layers": 3},
            {**_record(256, "per-source", ranks, flat, flat), "input": "cross-head", "layers": 3},
            _record(256, "per-source", ranks, flat, flat)]  # an old record: separate, 6 layers
    (tmp_path / "lp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep.write_report(tmp_path / "lp.jsonl")
    text = (tmp_path / "lp.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| 256 | per-source |" in line]
    assert [r.split(" |")[0] for r in rows] == ["| separate (6)", "| cross-head (3)", "| cross-segment (3)"]
    assert "- **cross-head (3 layers), per-source**: ranks the rows (tokens) on HH at 256 (-0.0300)" in text
    assert "- **cross-segment (3 layers), per-source**: ranks the rows (tokens) on HH at none" in text
