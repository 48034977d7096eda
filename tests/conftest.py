"""Shared cheap fixtures: a tiny byte-level BPE tokenizer, tiny random Gemma2/Llama ModelConfigs, a tiny pair frame.

All session-scoped objects are immutable (configs are pydantic copies per test via ``model_copy``).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_WORDS = ("good", "bad", "clear", "wrong", "short", "long", "answer", "question", "the", "a", "is", "fine",
          "python", "paris", "sea", "blue", "cat", "dog", "tree", "river")


def _pair_rows(n: int = 24):
    """Synthetic pairs whose label is learnable: the response saying 'good' wins, 'same' on both sides ties."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        filler = lambda k: " ".join(rng.choice(_WORDS) for _ in range(k))  # noqa: E731
        label = i % 3
        if label == 0:
            a, b = f"good {filler(rng.randint(3, 12))}", f"bad {filler(rng.randint(3, 12))}"
        elif label == 1:
            a, b = f"bad {filler(rng.randint(3, 12))}", f"good {filler(rng.randint(3, 12))}"
        else:
            a, b = f"same {filler(rng.randint(3, 12))}", f"same {filler(rng.randint(3, 12))}"
        prompt = [f"question {i}: {filler(rng.randint(2, 10))}?"]
        ra, rb = [a], [b]
        if i % 7 == 3:  # a few multi-turn rows
            prompt.append(f"and {filler(3)}?")
            ra.append(f"then {filler(4)}")
            rb.append(f"also {filler(2)}")
        rows.append({"id": f"r{i}", "prompt": prompt, "response_a": ra, "response_b": rb, "label": label,
                     "source": "tiny", "model_a": "m1", "model_b": "m2"})
    return rows


@pytest.fixture(scope="session")
def tiny_pairs_rows():
    return _pair_rows()


@pytest.fixture
def tiny_pairs(tiny_pairs_rows):
    """Canonical frame of 24 synthetic labelled pairs (labels 0/1/2 cycling; 3 multi-turn rows)."""
    from arena_kd.data.schema import make_frame

    return make_frame(tiny_pairs_rows)


@pytest.fixture(scope="session")
def tiny_bpe_tokenizer(tmp_path_factory, tiny_pairs_rows):
    """Folder of a 400-token byte-level BPE (Llama-like: <s> prefix, <pad>/<s>/</s>/<unk>) trained on tiny_pairs."""
    from arena_kd.llm.tokenizer import train_bpe_tokenizer

    texts = [t for r in tiny_pairs_rows for col in ("prompt", "response_a", "response_b") for t in r[col]]
    texts += ["<prompt>: ", "<response_a>: ", "<response_b>: ", "[turn 1] [turn 2]"]
    d = tmp_path_factory.mktemp("tok") / "bpe-400"
    train_bpe_tokenizer(texts, 400, d)
    return str(d)


def _model_cfg(tokenizer_dir: str, random_init: dict, **kw):
    from arena_kd.common.config_model import ModelConfig

    return ModelConfig(
        backbone="random",
        tokenizer=tokenizer_dir,
        random_init=random_init,
        gradient_checkpointing=False,
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
        **kw,
    )


TINY_GEMMA2 = {"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 16}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture(scope="session")
def tiny_gemma2_cfg(tiny_bpe_tokenizer):
    """ModelConfig of a 2-layer, 32-wide random Gemma2 (eager attention, softcapping on) with LoRA r=4."""
    return _model_cfg(tiny_bpe_tokenizer, TINY_GEMMA2)


@pytest.fixture(scope="session")
def tiny_llama_cfg(tiny_bpe_tokenizer):
    """ModelConfig of a 2-layer, 32-wide random Llama with LoRA r=4."""
    return _model_cfg(tiny_bpe_tokenizer, TINY_LLAMA)
