"""benchmarks/cross_embeddings: the three poolings of a rendered pair read the right tokens under either padding side,
the probe inputs exchange a and b under an A/B swap, a pair-pooled vector of a context-free backbone carries no A-vs-B
signal that the per-field vectors do carry, and the vectors of a real (tiny random) classifier are cached once."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arena_kd.common.metrics import log_loss, own_mean  # noqa: E402
from benchmarks import cross_embeddings as ce  # noqa: E402
from benchmarks import linear_probe as lp  # noqa: E402


class _Out:
    def __init__(self, h):
        self.last_hidden_state = h


class ContextFree(torch.nn.Module):
    """A backbone whose hidden state at a token is that token's embedding: no context, no position."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask):
        return _Out(self.table[input_ids])


def test_pooling_reads_the_same_tokens_under_left_and_right_padding():
    from arena_kd.llm.batching import collate

    rng = np.random.default_rng(0)
    table = torch.from_numpy(rng.normal(size=(50, 4))).float()
    ids = [[1, 5, 6, 7, 8, 9, 2], [1, 10, 11, 12, 13, 14, 15, 16, 17, 2], [1, 20, 21, 22, 2]]
    spans = [((1, 2), (2, 4), (4, 6)), ((1, 3), (3, 6), (6, 9)), ((1, 2), (2, 4), (4, 4))]  # last: empty B
    pooled = {}
    for side in ("left", "right"):
        b = collate(ids, 0, side, with_position_ids=False)
        pooled[side] = ce.pool_hidden(table[b["input_ids"]], b["attention_mask"], spans)
        pooled[side + "-last"] = ce.pool_hidden(table[b["input_ids"]], b["attention_mask"], spans, "last_non_pad")
    for k in ce.POOLS:
        np.testing.assert_allclose(pooled["left"][k], pooled["right"][k], rtol=1e-6)
        np.testing.assert_allclose(pooled["left-last"][k], pooled["right-last"][k], rtol=1e-6)
    t = table.numpy()
    np.testing.assert_allclose(pooled["left"]["head"][1], t[1], rtol=1e-6)  # an encoder's head: the first token
    np.testing.assert_allclose(pooled["right-last"]["head"][2], t[2], rtol=1e-6)  # a decoder's: the last real one
    np.testing.assert_allclose(pooled["left"]["mean"][0], t[ids[0]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(pooled["left"]["segment"][1, 1], t[[12, 13, 14]].mean(0), rtol=1e-6)  # A: ids[1][3:6]
    np.testing.assert_allclose(pooled["left"]["segment"][1, 2], t[[15, 16, 17]].mean(0), rtol=1e-6)
    assert not pooled["left"]["segment"][2, 2].any()  # an empty field gives zeros


def test_probe_inputs_exchange_a_and_b_when_the_orientations_are_exchanged():
    rng = np.random.default_rng(1)
    straight = {"head": rng.normal(size=(5, 4)), "mean": rng.normal(size=(5, 4)), "segment": rng.normal(size=(5, 3, 4))}
    swapped = {"head": rng.normal(size=(5, 4)), "mean": rng.normal(size=(5, 4)), "segment": rng.normal(size=(5, 3, 4))}
    one, other = ce.pair_inputs(straight, swapped), ce.pair_inputs(swapped, straight)
    for pool in ce.POOLS:
        np.testing.assert_allclose(one[pool]["a"], other[pool]["b"])
        np.testing.assert_allclose(one[pool]["b"], other[pool]["a"])
        np.testing.assert_allclose(one[pool]["p"], other[pool]["p"])
        np.testing.assert_allclose(np.linalg.norm(one[pool]["a"], axis=1), 1.0)
    assert not one["head"]["p"].any()


def _planted_rows(n: int, rng):
    """Rendered-like rows [CLS] prompt A B [SEP] (both orientations) whose label follows the answers' words: tokens
    10-19 are good, 20-29 bad; A wins when it holds more good tokens than B."""
    straight, swapped, s_spans, w_spans, y = [], [], [], [], []
    for _ in range(n):
        p = list(rng.integers(30, 40, size=3))
        k_a, k_b = rng.integers(0, 5, size=2)
        a = list(rng.permutation(list(rng.integers(10, 20, size=k_a)) + list(rng.integers(20, 30, size=5 - k_a))))
        b = list(rng.permutation(list(rng.integers(10, 20, size=k_b)) + list(rng.integers(20, 30, size=5 - k_b))))
        y.append(0 if k_a > k_b else 1 if k_b > k_a else 2)
        for first, second, out, spans in ((a, b, straight, s_spans), (b, a, swapped, w_spans)):
            out.append([1] + p + first + second + [2])
            spans.append(((1, 4), (4, 9), (9, 14)))
    return straight, swapped, s_spans, w_spans, np.array(y)


def test_a_pair_pooled_vector_loses_the_answers_signal_that_per_field_vectors_keep():
    rng = np.random.default_rng(2)
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(40, 8, generator=gen)
    table[10:20] += 2.0 * torch.nn.functional.normalize(torch.randn(8, generator=gen), dim=0)  # the good direction
    base = ContextFree(table)
    inputs, ys = [], []
    for n in (300, 300):
        straight, swapped, s_spans, w_spans, y = _planted_rows(n, rng)
        pooled = [ce.run_backbone(base, ids, spans, 0, "right") for ids, spans in ((straight, s_spans),
                                                                                 (swapped, w_spans))]
        inputs.append(ce.pair_inputs(*pooled))
        ys.append(y)
    fit, test = inputs
    losses = {}
    for pool in ce.POOLS:
        probs = lp.PairProbe(1.0).fit(fit[pool]["a"], fit[pool]["b"], fit[pool]["p"], ys[0]).predict(
            test[pool]["a"], test[pool]["b"], test[pool]["p"])
        losses[pool] = (log_loss(ys[1], probs), log_loss(ys[1], own_mean(probs)))
    # the same multiset of tokens in both orientations: mean pooling (and the shared first token) cannot tell A from B
    np.testing.assert_allclose(fit["mean"]["a"], fit["mean"]["b"], atol=1e-6)
    assert losses["mean"][0] >= losses["mean"][1] - 1e-3 and losses["head"][0] >= losses["head"][1] - 1e-3
    assert losses["segment"][0] < losses["segment"][1] - 0.2  # the per-field vectors rank the rows


TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 128}


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_cross_inputs_run_a_classifier_body_once_and_then_read_the_cache(arch, tiny_pairs, tiny_llama_cfg, tmp_path,
                                                                        monkeypatch):
    cfg = tiny_llama_cfg.model_copy(update={"lora": tiny_llama_cfg.lora.model_copy(update={"enabled": False})})
    if arch == "bert":
        cfg = cfg.model_copy(update={"random_init": TINY_BERT})
    frames = {"train": tiny_pairs, "test": tiny_pairs.iloc[:4]}
    first = ce.cross_inputs(frames, cfg, 64, tmp_path / "cache", workdir=tmp_path)
    assert len(list((tmp_path / "cache").glob("cross-*.npz"))) == 2 and not list(tmp_path.glob("cache/*.tmp*"))
    for name, frame in frames.items():
        for pool in ce.POOLS:
            v = first[name][pool]
            assert v["a"].shape == (len(frame), 32) and np.isfinite(v["a"]).all()
            assert not np.allclose(v["a"], v["b"])  # the two answers differ, so do their vectors
    np.testing.assert_allclose(first["test"]["segment"]["a"], first["train"]["segment"]["a"][:4], rtol=1e-4,
                               atol=1e-5)  # a row's vectors do not depend on its batch

    def refuse(*a, **kw):
        raise AssertionError("the backbone ran again: the cache was not read")

    monkeypatch.setattr(ce, "run_backbone", refuse)
    again = ce.cross_inputs(frames, cfg, 64, tmp_path / "cache", workdir=tmp_path)
    for pool in ce.POOLS:
        np.testing.assert_array_equal(again["train"][pool]["a"], first["train"][pool]["a"])
    with pytest.raises(AssertionError, match="cache was not read"):  # another budget is another input
        ce.cross_inputs(frames, cfg, 48, tmp_path / "cache", workdir=tmp_path)
