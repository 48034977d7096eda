"""Training rows as model batches: every row rendered once per orientation, its label and teacher logits checked,
and micro-batches built with A/B swap augmentation and dynamic padding.

``swap``: with ``both`` each row contributes both orientations to the same micro-batch (2x the sequences), with
``random`` each row is swapped with p=0.5 (seeded per row and epoch, so a resumed run draws the same orientations),
with ``none`` never. A swap exchanges the A/B label (tie stays) and index 0<->1 on the last axis of
``teacher_logits`` (``common.keys.SWAP_PERMUTATION``, ``data.schema.swap_logits``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import torch

from arena_kd.common.config_model import RenderConfig
from arena_kd.common.errors import UserError
from arena_kd.common.keys import SWAP_PERMUTATION
from arena_kd.data.schema import swap_logits
from arena_kd.llm.batching import collate


def labels_array(df: pd.DataFrame, where: str, required: bool) -> np.ndarray:
    """int labels of a frame, -100 (ignored by the loss) where missing; missing is refused when ``required``."""
    lab = df["label"]
    if lab.isna().any():
        if required:
            row = int(np.flatnonzero(lab.isna().to_numpy())[0])
            raise UserError(f"{where}: row {row}, column 'label': missing label in a training frame")
    return lab.fillna(-100).astype(int).to_numpy()


def teacher_array(df: pd.DataFrame, where: str) -> np.ndarray | None:
    """float32 [n,3] or [n,k,3] teacher logits of a frame (None without a ``teacher_logits`` column)."""
    if "teacher_logits" not in df.columns:
        return None
    rows = []
    shape = None
    for i, v in enumerate(df["teacher_logits"]):
        a = np.asarray(v, dtype=np.float32)
        if shape is None:
            shape = a.shape
        if a.shape != shape or a.shape[-1] != 3 or a.ndim not in (1, 2) or not np.isfinite(a).all():
            raise UserError(f"{where}: row {i}, column 'teacher_logits': expected finite shape (3,) or (k,3) "
                            f"like row 0 {shape}, got {a.shape}")
        rows.append(a)
    return np.stack(rows) if rows else np.zeros((0, 3), dtype=np.float32)


def render_ids(df: pd.DataFrame, tokenizer, max_length: int, rc: RenderConfig, swap: bool) -> list[list[int]]:
    """Token ids of every row (``data.render.render_batch`` with the render settings), in one orientation."""
    return render_ids_spans(df, tokenizer, max_length, rc, swap)[0]


def render_ids_spans(df: pd.DataFrame, tokenizer, max_length: int, rc: RenderConfig, swap: bool):
    """:func:`render_ids` and each row's field spans (``data.render.render_batch_spans``: what answer pooling reads)."""
    from arena_kd.data.render import render_batch_spans

    return render_batch_spans(df, tokenizer, max_length, rc.truncation, rc.prompt_fraction, swap=swap,
                              template=rc.template)


class PairDataset(torch.utils.data.Dataset):
    """Rendered rows of a pair frame; item = {"ids", "ids_swapped" (None for eval), "label", "teacher" (or None),
    "spans", "spans_swapped" (the rows' field spans, or None)}."""

    def __init__(self, ids: list[list[int]], ids_swapped: list[list[int]] | None, labels: np.ndarray,
                 teacher: np.ndarray | None, spans: list | None = None, spans_swapped: list | None = None):
        self.ids, self.ids_swapped, self.labels, self.teacher = ids, ids_swapped, labels, teacher
        self.spans, self.spans_swapped = spans, spans_swapped
        self.lengths = [len(x) for x in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "row": int(i),
            "ids": self.ids[i],
            "ids_swapped": self.ids_swapped[i] if self.ids_swapped is not None else None,
            "label": int(self.labels[i]),
            "teacher": self.teacher[i] if self.teacher is not None else None,
            "spans": self.spans[i] if self.spans is not None else None,
            "spans_swapped": self.spans_swapped[i] if self.spans_swapped is not None else None,
        }


def _flip(seed: int, epoch: int, row: int) -> bool:
    h = hashlib.blake2b(f"{seed}:{epoch}:{row}".encode(), digest_size=2).digest()
    return bool(h[0] & 1)


class PairCollator:
    """Dataset items -> padded model batch with labels long[B'], teacher_logits float[B',(k,)3] and, when the items
    carry spans, answer_spans long[B',2,2] (``llm.answer_pooling``).

    swap: "none" | "random" | "both" (see module doc); items without swapped ids (eval) are never swapped.
    ``epoch`` is set by ``llm.trainer.EpochCallback``.
    """

    def __init__(self, pad_token_id: int, padding_side: str, swap: str, seed: int, position_ids: bool):
        self.pad, self.side, self.swap, self.seed = pad_token_id, padding_side, swap, seed
        self.position_ids = position_ids
        self.epoch = 0

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs, labels, teach, spans = [], [], [], []
        for it in items:
            if it["ids_swapped"] is None or self.swap == "none":
                orients = [False]
            elif self.swap == "both":
                orients = [False, True]
            else:
                orients = [_flip(self.seed, self.epoch, it["row"])]
            for sw in orients:
                seqs.append(it["ids_swapped"] if sw else it["ids"])
                spans.append(it.get("spans_swapped" if sw else "spans"))
                y = it["label"]
                labels.append(y if (not sw or y < 0) else SWAP_PERMUTATION[y])
                if it["teacher"] is not None:
                    t = it["teacher"]
                    teach.append(swap_logits(t) if sw else t)
        batch = collate(seqs, self.pad, self.side, with_position_ids=self.position_ids)
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if spans and all(sp is not None for sp in spans):
            from arena_kd.llm.answer_pooling import padded_spans

            batch["answer_spans"] = padded_spans(spans, [len(x) for x in seqs], batch["input_ids"].shape[1], self.side)
        if teach:
            batch["teacher_logits"] = torch.from_numpy(np.ascontiguousarray(np.stack(teach))).float()
        return batch
