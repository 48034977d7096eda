"""arena_kd.llm.predict / llm.batching: token-budgeted batching, padding invariance, TTA symmetry, 2 processes == 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arena_kd.data.render import render_batch
from arena_kd.data.schema import swap_frame
from arena_kd.llm.batching import collate, padding_efficiency, token_budget_batches
from arena_kd.llm.loading import load_classifier
from arena_kd.llm.predict import logits_for_ids, predict_logits, predict_tta

ROOT = Path(__file__).resolve().parents[1]
KW = dict(max_length=96, truncation="budget", prompt_fraction=0.2, progress=False)


TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 128}


@pytest.fixture(scope="module", params=["gemma2", "llama", "bert"])
def tiny_model(request, tiny_gemma2_cfg, tiny_llama_cfg, tmp_path_factory):
    """Decoders (last-token pooling) and an encoder (first-token pooling)."""
    if request.param == "bert":
        cfg = tiny_llama_cfg.model_copy(update={"random_init": TINY_BERT})
    else:
        cfg = tiny_gemma2_cfg if request.param == "gemma2" else tiny_llama_cfg
    wd = tmp_path_factory.mktemp(f"wd-{request.param}")
    model, tok, info = load_classifier(cfg, training=False, workdir=wd)
    return model, tok, info, cfg, wd


def test_token_budget_batches_cover_rows_and_respect_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=257)
    lengths[5] = 5000  # longer than the budget: a batch of its own
    batches = token_budget_batches(lengths, tokens_per_batch=1024, max_batch_size=16)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or lengths[b].max() * len(b) <= 1024
    assert batches[0].tolist() == [5]  # longest first
    assert padding_efficiency(lengths, batches) > 0.9


def test_collate_positions_match_for_left_and_right_padding():
    seqs = [[5, 6, 7], [8], [9, 10]]
    r = collate(seqs, pad_token_id=0, padding_side="right")
    left = collate(seqs, pad_token_id=0, padding_side="left")
    assert r["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    for b in (r, left):
        real = b["attention_mask"].bool()
        assert [b["position_ids"][i][real[i]].tolist() for i in range(3)] == [[0, 1, 2], [0], [0, 1]]


def _one_by_one(model, tok, df, swap=False):
    seqs = render_batch(df, tok, KW["max_length"], KW["truncation"], KW["prompt_fraction"], swap=swap)
    out = []
    with torch.no_grad():
        for s in seqs:
            out.append(model(input_ids=torch.tensor([s])).logits[0].float().numpy())
    return np.stack(out)


def test_sorted_budgeted_prediction_equals_one_by_one(tiny_model, tiny_pairs):
    model, tok, *_ = tiny_model
    naive = _one_by_one(model, tok, tiny_pairs)
    batched = predict_logits(model, tok, tiny_pairs, tokens_per_batch=300, max_batch_size=8, **KW)
    assert batched.dtype == np.float32 and batched.shape == (len(tiny_pairs), 3)
    np.testing.assert_allclose(batched, naive, atol=1e-5, rtol=0)
    assert np.abs(naive).max() > 0  # a real comparison, not of zeros


def test_padding_side_and_batch_composition_do_not_change_logits(tiny_model, tiny_pairs):
    model, tok, info, *_ = tiny_model
    seqs = render_batch(tiny_pairs, tok, 96, "budget", 0.2)
    pad = tok.pad_token_id
    alone = logits_for_ids(model, seqs, pad, tokens_per_batch=1, max_batch_size=1)
    right = logits_for_ids(model, seqs, pad, tokens_per_batch=10_000, max_batch_size=64, padding_side="right")
    left = logits_for_ids(model, seqs, pad, tokens_per_batch=10_000, max_batch_size=64, padding_side="left")
    # a short row padded next to the longest row, in both orientations
    order = np.argsort([len(s) for s in seqs])
    pair = [seqs[order[0]], seqs[order[-1]]]
    mixed = logits_for_ids(model, pair, pad, tokens_per_batch=10_000, max_batch_size=2, padding_side="left")
    assert len(seqs[order[-1]]) - len(seqs[order[0]]) > 10
    np.testing.assert_allclose(right, alone, atol=1e-5, rtol=0)
    # encoders pool the first position: only right padding is valid (the engine's side)
    if info["pooling"] == "first_token":
        assert not np.allclose(left, alone, atol=1e-5)
        return
    np.testing.assert_allclose(left, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mixed, alone[[order[0], order[-1]]], atol=1e-5, rtol=0)


def test_tta_is_exactly_symmetric(tiny_model, tiny_pairs):
    model, tok, *_ = tiny_model
    kw = dict(tokens_per_batch=400, max_batch_size=8, **KW)
    out = predict_tta(model, tok, tiny_pairs, **kw)
    sw = predict_tta(model, tok, swap_frame(tiny_pairs), **kw)
    assert set(out) == {"orig", "swap", "avg"}
    np.testing.assert_allclose(sw["avg"], out["avg"][:, [1, 0, 2]], atol=1e-6, rtol=0)
    np.testing.assert_allclose(sw["orig"], out["swap"][:, [1, 0, 2]], atol=1e-6, rtol=0)
    # avg is a mean of log-probabilities: its exp sums to <= 1 and it lies between the two members
    lsm = lambda x: x - np.log(np.exp(x).sum(1, keepdims=True))  # noqa: E731
    np.testing.assert_allclose(out["avg"],
                               (lsm(out["orig"].astype(np.float64)) + lsm(out["swap"].astype(np.float64))) / 2,
                               atol=1e-6)
    assert not np.allclose(out["orig"], out["swap"])  # the model is not trivially symmetric


def test_empty_frame_gives_empty_logits(tiny_model, tiny_pairs):
    model, tok, *_ = tiny_model
    out = predict_logits(model, tok, tiny_pairs.head(0), **KW)
    assert out.shape == (0, 3)


def _worker(rank: int, world: int, port: int, cfg_json: str, wd: str, rows: list, queue) -> None:
    """One data-parallel process (forked: shares the parent's imports, so it starts in well under a second)."""
    import torch.distributed as dist

    from arena_kd.common.config_model import ModelConfig
    from arena_kd.data.schema import make_frame

    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        model, tok, _ = load_classifier(ModelConfig.model_validate_json(cfg_json), training=False, workdir=wd)
        out = predict_logits(model, tok, make_frame(rows), tokens_per_batch=300, max_batch_size=4, **KW)
        queue.put((rank, out.tolist(), None))
        dist.barrier()
        dist.destroy_process_group()
    except Exception as exc:  # pragma: no cover - reported by the test
        queue.put((rank, None, repr(exc)))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_same_logits_as_one(tiny_llama_cfg, tiny_pairs_rows, tiny_pairs, tmp_path):
    """torch.distributed (gloo, 2 processes): each predicts its shard, all-gathered in input order."""
    import multiprocessing as mp

    wd = tmp_path / "wd"
    # also builds the shared random backbone
    model, tok, _ = load_classifier(tiny_llama_cfg, training=False, workdir=wd)
    single = predict_logits(model, tok, tiny_pairs, tokens_per_batch=10_000, max_batch_size=64, **KW)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    cfg_json = tiny_llama_cfg.model_dump_json()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, cfg_json, str(wd), tiny_pairs_rows, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (out, err)) for r, out, err in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    assert all(err is None for _, err in results.values()), results
    for r in range(2):  # every process returns the full table in input order
        multi = np.asarray(results[r][0], dtype=np.float32)
        assert multi.shape == single.shape
        np.testing.assert_allclose(multi, single, atol=1e-5, rtol=0)
