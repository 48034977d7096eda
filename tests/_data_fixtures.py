"""Shared helpers for the data-layer tests: tiny tokenizers and small raw files (no downloads)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "Write a poem about the sea. The sea is wide and blue and deep.",
    "Explain recursion. A function that calls itself until a base case.",
    "<prompt>: <response_a>: <response_b>: [turn 1] [turn 2] [turn 10]",
    "Hello world! How are you today? I am fine, thank you very much.",
]
SPECIALS = ["<s>", "</s>", "<pad>", "[CLS]", "[SEP]", "<unk>"]


def tiny_bpe(style: str = "llama", vocab_size: int = 320):
    """A byte-level BPE PreTrainedTokenizerFast trained on a few sentences.

    style: 'llama' (post-processor adds <s> only), 'bert' ([CLS] ... [SEP]) or 'none' (no special tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", ids["<s>"])])
    elif style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
    kw = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if style == "bert":
        kw.update(cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


KAGGLE_TRAIN_HEADER = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", "winner_model_a",
                       "winner_model_b", "winner_tie"]


def kaggle_row(i, prompt, ra, rb, label=0, model_a="m1", model_b="m2") -> list:
    onehot = [int(label == k) for k in range(3)]
    return [i, model_a, model_b, json.dumps(prompt), json.dumps(ra), json.dumps(rb), *onehot]


def write_csv(path: Path, header: list, rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_kaggle_train(path: Path, n: int = 6) -> Path:
    rows = [kaggle_row(100 + i, [f"question {i}?"], [f"answer a{i}"], [f"answer b{i}"], label=i % 3) for i in range(n)]
    return write_csv(path, KAGGLE_TRAIN_HEADER, rows)
