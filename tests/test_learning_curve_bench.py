"""benchmarks/learning_curve*: the FLOPs-per-token rule the tokens/s are judged by, the one-axis grid, the
constants a point is compared with, and the report built from the JSON lines (no training here: figures are
printed by the benchmark, never asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import learning_curve as lc  # noqa: E402
from benchmarks.learning_curve_flops import flops_per_token  # noqa: E402


def _body_params(model) -> int:
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for n, p in model.named_parameters() if p is not embed and "embed" not in n)


@pytest.mark.parametrize("lora,factor", [({"enabled": False}, 6.0), ({"r": 4, "alpha": 8}, 4.0)])
def test_training_flops_are_6n_full_and_about_4n_with_lora_everywhere(tiny_llama_cfg, tmp_path, lora, factor):
    from arena_kd.llm.loading import load_classifier

    cfg = tiny_llama_cfg.model_copy(update={"lora": tiny_llama_cfg.lora.model_copy(update=lora)})
    model, _, _ = load_classifier(cfg, training=True, workdir=tmp_path, seed=0)
    fl = flops_per_token(model, cfg)
    n = fl["body_params"]
    assert fl["predict"] == 2 * n
    # LoRA adds its own (small) weights to the body; the dense weight-gradient term is the head only
    assert fl["train"] == pytest.approx(factor * n, rel=0.12)


def test_lora_on_the_top_layer_only_stops_the_backward_pass_there(tiny_llama_cfg, tmp_path):
    from arena_kd.llm.loading import load_classifier

    top = tiny_llama_cfg.model_copy(update={"lora": tiny_llama_cfg.lora.model_copy(update={"top_layers": 1})})
    every = load_classifier(tiny_llama_cfg, training=True, workdir=tmp_path, seed=0)[0]
    upper = load_classifier(top, training=True, workdir=tmp_path, seed=0)[0]
    assert flops_per_token(upper, top)["train"] < flops_per_token(every, tiny_llama_cfg)["train"]


def test_grid_moves_one_axis_at_a_time_around_the_base_point():
    points = lc.grid(["minilm-l6"], ["rows", "epochs"])
    base = {"backbone": "minilm-l6", **lc.BASES["minilm-l6"]}
    assert sum(p == base for p in points) == 1  # the base point once, though both axes contain it
    for p in points:
        assert sum(p[k] != base[k] for k in base) <= 1
    assert {p["rows"] for p in points} == set(lc.AXES["rows"])
    assert len({lc.point_key(p) for p in points}) == len(points)


def test_model_config_reads_the_lora_spelling():
    full = lc.model_config({"backbone": "gemma3-270m", "lora": "full"})
    assert not full.lora.enabled and full.freeze_embeddings
    top = lc.model_config({"backbone": "smollm2-135m", "lora": "r8-top4"})
    assert top.lora.enabled and (top.lora.r, top.lora.alpha, top.lora.top_layers) == (8, 16, 4)
    assert lc.model_config({"backbone": "minilm-l6", "lora": "r16-all"}).lora.top_layers is None


def test_constants_are_the_training_frequencies_overall_and_per_source():
    train = pd.DataFrame({"label": [0, 0, 1, 2, 0, 1], "source": ["x", "x", "x", "y", "y", "y"]})
    test = pd.DataFrame({"source": ["x", "y", "z"]})
    prior, own = lc.constants(train, test)
    assert np.allclose(prior, [[3 / 6, 2 / 6, 1 / 6]] * 3)
    assert np.allclose(own[0], [2 / 3, 1 / 3, 0]) and np.allclose(own[1], [1 / 3, 1 / 3, 1 / 3])
    assert np.allclose(own[2], prior[0])  # a source unseen in training falls back to the prior


def _record(backbone: str, rows: int, d: float, lo: float, hi: float) -> dict:
    return {"backbone": backbone, **lc.BASES[backbone], "rows": rows, "dtype": "fp32", "wall_s": rows / 10,
            "cpu_s": rows / 20, "train_cpu_s": 1.0, "predict_cpu_s": 1.0, "logloss": 0.9 + d, "ci": [0.85, 0.95],
            "prior": 0.9, "vs_prior": [d, lo, hi], "vs_source_constants": [0.05, 0.01, 0.09],
            "per_source": {"hh_harmless": {"logloss": 0.7, "constant": 0.69}}, "train_tokens_per_s": 100.0,
            "predict_tokens_per_s": 300.0, "train_fraction_of_gemm": 0.5, "predict_fraction_of_gemm": 0.6,
            "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 1.0, 1.0]}


def test_report_names_the_cheapest_point_that_beats_the_prior(tmp_path, monkeypatch):
    from benchmarks import learning_curve_report as rep

    log = tmp_path / "lc.jsonl"
    recs = [_record("minilm-l6", 400, 0.01, -0.02, 0.04), _record("minilm-l6", 1958, -0.04, -0.07, -0.01),
            _record("minilm-l6", 979, -0.02, -0.05, -0.001)]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    monkeypatch.setattr(rep, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(rep, "SECTION_MD", tmp_path / "lc.md")
    monkeypatch.setattr(rep, "PLOT", tmp_path / "lc.png")
    tp = {"backbone": "minilm-l6", "lora": "full", "max_length": 128, "threads": 1, "kind": "train", "mode": "bf16",
          "tokens_per_cpu_s": 1920.4, "tokens_per_s": 331.4, "gflops_per_cpu_s": 124.4, "fraction_of_gemm": 0.286,
          "fraction_of_fp32_gemm": 1.21, "load": 11.3}
    monkeypatch.setattr(rep, "THROUGHPUT", tmp_path / "tp.jsonl")
    (tmp_path / "tp.jsonl").write_text(json.dumps(tp) + "\n")
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\nkept\n")
    rep.write_report(log)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "kept" in text and text.count(rep.BEGIN) == 1
    assert "beats the class prior first at rows 979" in text  # cheaper than 1958; 400 does not resolve
    assert "beats the per-source constants at none" in text
    assert (tmp_path / "lc.png").stat().st_size > 0
    assert "| minilm-l6 (full, 128 tok) | 1 | train | bf16 | 1920 | 331 | 124.4 | 29% | 121% | 11.3 |" in text
    rep.write_report(log)  # rewritten in place, not appended
    assert (tmp_path / "RESULTS.md").read_text().count(rep.BEGIN) == 1


def test_a_point_is_scored_against_its_own_mean_per_source():
    """The row-signal column: a constant (with no A/B preference) scores exactly its own mean; a point that puts
    weight on each row's true label beats its mean with an interval below zero; one that points the wrong way is
    worse than its mean."""
    rng = np.random.default_rng(0)
    n = 120
    test = pd.DataFrame({"label": rng.integers(0, 3, n), "source": np.repeat(["hh_harmless", "mtbench_human"], n // 2)})
    groups = np.arange(n) // 2
    y = test["label"].to_numpy()
    prior = np.tile([0.4, 0.4, 0.2], (n, 1))
    const = lc.scores(test, groups, prior, prior, prior, seed=0)["per_source"]
    assert all(v["vs_own_mean"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12) for v in const.values())
    right = lc.scores(test, groups, 0.5 * np.eye(3)[y] + 0.5 / 3, prior, prior, seed=0)["per_source"]
    wrong = lc.scores(test, groups, 0.5 * np.eye(3)[(y + 1) % 3] + 0.5 / 3, prior, prior, seed=0)["per_source"]
    for s in ("hh_harmless", "mtbench_human"):
        assert right[s]["vs_own_mean"][2] < 0  # the whole interval below zero
        assert wrong[s]["vs_own_mean"][1] > 0


def test_report_shows_the_row_signal_and_dashes_for_points_logged_before_it():
    from benchmarks import learning_curve_report as rep

    old = _record("minilm-l6", 400, 0.01, -0.02, 0.04)
    new = _record("minilm-l6", 979, -0.02, -0.05, -0.001)
    new["per_source"] = {"hh_harmless": {"logloss": 0.7, "constant": 0.69, "vs_own_mean": [-0.01, -0.02, -0.003]},
                         "mtbench_human": {"logloss": 1.1, "constant": 1.06, "vs_own_mean": [0.02, -0.01, 0.05]}}
    recs = [old, new]
    for r in recs:
        r.setdefault("head", "σ0.02, lr = lr")
    text = rep.table(recs)
    assert "| — / — |" in text  # the old point: not measured, not zero
    assert "| -0.0100 [-0.0200, -0.0030] / +0.0200 [-0.0100, +0.0500] |" in text
    line = rep.verdicts(recs)[0]
    assert "ranks the rows better than its own mean on HH at 1, MT at 0 of the 1 point(s) that measured it" in line
