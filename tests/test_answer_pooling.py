"""llm.answer_pooling: the head reads its token plus mean(h[A]) − mean(h[B]) on Gemma2, Llama and BERT bodies; the
spans reach it in training, prediction and the export's reference check; a model that pools the answers refuses a
forward without their spans; the flag survives save and load; and on planted data the pooled head learns which answer
is better where the plain head cannot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from arena_kd.common.config_model import RenderConfig, TrainConfig
from arena_kd.data.render import render_batch_spans
from arena_kd.data.schema import make_frame, swap_frame
from arena_kd.llm import answer_pooling as ap
from arena_kd.llm.batching import collate
from arena_kd.llm.loading import load_classifier
from arena_kd.llm.predict import predict_logits, predict_tta

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 128}


def test_answer_difference_is_the_mean_over_a_minus_the_mean_over_b():
    h = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    spans = torch.tensor([[[1, 3], [3, 6]], [[0, 2], [2, 2]]])  # row 1: an empty B
    d = ap.answer_difference(h, spans)
    torch.testing.assert_close(d[0], h[0, 1:3].mean(0) - h[0, 3:6].mean(0))
    torch.testing.assert_close(d[1], h[1, 0:2].mean(0))


def test_padded_spans_follow_the_padding_side():
    spans = [((1, 2), (2, 4), (4, 6)), ((1, 1), (1, 2), (2, 3))]
    right = ap.padded_spans(spans, [7, 4], 7, "right")
    left = ap.padded_spans(spans, [7, 4], 7, "left")
    assert right.tolist() == [[[2, 4], [4, 6]], [[1, 2], [2, 3]]]
    assert left.tolist() == [[[2, 4], [4, 6]], [[4, 5], [5, 6]]]  # the short row moved right by 3


@pytest.fixture(params=["gemma2", "llama", "bert"])
def pooled_model(request, tiny_gemma2_cfg, tiny_llama_cfg, tmp_path):
    base = tiny_gemma2_cfg if request.param == "gemma2" else tiny_llama_cfg
    cfg = base.model_copy(update={"answer_pooling": True,
                                  **({"random_init": TINY_BERT} if request.param == "bert" else {})})
    model, tok, info = load_classifier(cfg, training=False, workdir=tmp_path)
    plain, _, _ = load_classifier(cfg.model_copy(update={"answer_pooling": False}), training=False, workdir=tmp_path,
                                  tokenizer=tok)
    return model, plain, tok, info, cfg


def _batch(tok, frame, swap=False):
    ids, fields = render_batch_spans(frame, tok, 64, swap=swap)
    b = collate(ids, tok.pad_token_id, "right", with_position_ids=False)
    return b, ap.padded_spans(fields, [len(x) for x in ids], b["input_ids"].shape[1], "right")


def test_the_head_reads_its_token_plus_the_answers_difference(pooled_model, tiny_pairs):
    model, plain, tok, info, _ = pooled_model
    assert ap.is_installed(model) and not ap.is_installed(plain)
    b, spans = _batch(tok, tiny_pairs.head(5))
    with torch.no_grad():
        base = plain(**b, output_hidden_states=True)
        with ap.answer_spans(model, spans):
            got = model(**b).logits
    d = ap.answer_difference(base.hidden_states[-1], spans)
    head = model.score if hasattr(model, "score") else model.classifier
    # linear head: W·(h_token + d) + b = plain logits + W·d
    torch.testing.assert_close(got, base.logits + d @ head.weight.T, rtol=1e-4, atol=1e-5)
    assert (got - base.logits).abs().max() > 1e-3  # the difference does move the logits


def test_a_forward_without_the_spans_is_refused(pooled_model, tiny_pairs):
    model, _, tok, _, _ = pooled_model
    b, _ = _batch(tok, tiny_pairs.head(2))
    with pytest.raises(RuntimeError, match="pools the answers"):
        model(**b)
    from arena_kd.llm.predict import logits_for_ids

    with pytest.raises(ValueError, match="needs their spans"):
        logits_for_ids(model, [list(map(int, b["input_ids"][0]))], tok.pad_token_id)


def test_prediction_passes_the_spans_and_tta_stays_exactly_symmetric(pooled_model, tiny_pairs):
    model, plain, tok, _, _ = pooled_model
    df = tiny_pairs.head(6)
    kw = dict(max_length=64, progress=False, tokens_per_batch=120)  # several batches of different widths
    got = predict_logits(model, tok, df, **kw)
    b, spans = _batch(tok, df)
    with torch.no_grad(), ap.answer_spans(model, spans):
        want = model(**b).logits.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # batching does not change a row's pooling
    tta = predict_tta(model, tok, df, **kw)["avg"]
    tta_sw = predict_tta(model, tok, swap_frame(df), **kw)["avg"]
    np.testing.assert_allclose(tta_sw, tta[:, [1, 0, 2]], rtol=1e-5, atol=1e-6)
    assert np.abs(got - predict_logits(plain, tok, df, **kw)).max() > 1e-3


def test_the_flag_is_saved_and_a_reloaded_model_pools_the_same(pooled_model, tiny_pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from arena_kd.llm.export import reference_logits

    model, _, tok, _, _ = pooled_model
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["answer_pooling"] is True
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert ap.wants_answer_pooling(again) and not ap.is_installed(again)
    ap.install(again)
    ids, fields = render_batch_spans(tiny_pairs.head(3), tok, 64)
    spans = [[*a, *b] for _, a, b in fields]
    np.testing.assert_allclose(reference_logits(again, ids, spans), reference_logits(model, ids, spans), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(Exception, match="answer_spans"):
        reference_logits(model, ids)


def _planted(n: int, rng) -> "object":
    """Pairs whose label is which answer has more 'good' words (ties when equal); prompt and answer lengths carry
    nothing, the answers' words everything."""
    good, bad = ["sunny", "bright", "kind", "clear"], ["rainy", "dull", "rude", "murky"]
    rows = []
    for i in range(n):
        k_a, k_b = rng.integers(0, 4, size=2)
        words = lambda k: " ".join(rng.permutation([*rng.choice(good, k), *rng.choice(bad, 4 - k)]))  # noqa: E731
        rows.append({"id": f"r{i}", "prompt": ["describe the day"], "response_a": [words(k_a)],
                     "response_b": [words(k_b)], "label": 0 if k_a > k_b else 1 if k_b > k_a else 2})
    return make_frame(rows)


def test_answer_pooling_learns_which_answer_is_better_where_the_plain_head_does_not(tiny_llama_cfg, tmp_path):
    """A 2-layer random BERT, full fine-tuning, the same rows, steps and seed: with answer pooling held-out log loss
    falls well below the class prior; the plain first-token head stays near it in the same budget."""
    from arena_kd.common.metrics import log_loss
    from arena_kd.llm.train import train_classifier

    rng = np.random.default_rng(0)
    train, held = _planted(192, rng), _planted(96, rng)
    base = tiny_llama_cfg.model_copy(update={"random_init": TINY_BERT, "tokenizer": "bpe:400",
                                             "lora": tiny_llama_cfg.lora.model_copy(update={"enabled": False})})
    tc = TrainConfig(epochs=4, batch_size=16, grad_accum=1, learning_rate=3e-3, warmup_ratio=0.0, logging_steps=4,
                     swap_augmentation="random", group_by_length=True)
    prior = np.bincount(train["label"].astype(int), minlength=3) / len(train)
    y = held["label"].astype(int).to_numpy()
    losses = {}
    for pooled in (True, False):
        cfg = base.model_copy(update={"answer_pooling": pooled})
        res = train_classifier(cfg, tc, RenderConfig(max_length=48), train, None, tmp_path / f"run-{pooled}", seed=0,
                               workdir=tmp_path, progress=False)
        model, tok, _ = load_classifier(cfg, training=False, workdir=tmp_path, adapter=res.adapter_dir)
        z = predict_tta(model, tok, held, max_length=48, progress=False)["avg"]
        losses[pooled] = log_loss(y, np.exp(z))
    constant = log_loss(y, np.tile(prior, (len(y), 1)))
    print(f"held-out log loss: pooled {losses[True]:.4f}, plain {losses[False]:.4f}, prior {constant:.4f}")
    assert losses[True] < constant - 0.15, (losses, constant)
    assert losses[True] < losses[False] - 0.1, (losses, constant)


def test_a_pipeline_whose_student_pools_the_answers_exports_verifies_and_submits(tmp_path):
    """`arena-kd all` on the smoke config with ``student.model.answer_pooling``: the export keeps the flag and the
    answers' spans of its reference rows, a loaded copy pools and passes its own check, and every test row is scored by
    the student path of the submission."""
    from pathlib import Path

    import pandas as pd

    from arena_kd.common.config import load_config
    from arena_kd.common.io import read_keyed_table
    from arena_kd.llm.export import load_export, verify_export
    from arena_kd.pipeline import run_pipeline
    from arena_kd.submission.run import run_submission

    root = Path(__file__).resolve().parents[1]
    for name in ("test.csv", "test_labels.csv", "sample_submission.csv"):
        full = pd.read_csv(root / "data/sample" / name)
        pd.concat([full.head(12), full.tail(12)]).to_csv(tmp_path / name, index=False)
    cfg = load_config(root / "configs" / "smoke.yaml",
                      [f"workdir={tmp_path / 'work'}", f"data.test={tmp_path / 'test.csv'}",
                       f"data.test_labels={tmp_path / 'test_labels.csv'}",
                       f"data.sample_submission={tmp_path / 'sample_submission.csv'}",
                       "student.model.answer_pooling=true"])
    run_pipeline(cfg)
    export = cfg.workdir_path / "student" / "export"
    assert json.loads((export / "model" / "config.json").read_text())["answer_pooling"] is True
    ref, _ = read_keyed_table(export / "reference_logits.parquet")
    assert "answer_spans" in ref.columns and all(len(s) == 4 for s in ref["answer_spans"])
    model, _, _ = load_export(export)
    assert ap.is_installed(model)
    assert verify_export(export, model=model)["ok"]
    res = run_submission(cfg, out=str(tmp_path / "sub.csv"), progress=False)
    assert sum(res.counts.values()) == 24 and all(k.startswith("stacker") or k.startswith("student")
                                                  for k in res.counts), res.counts
