"""Distillation loss over logits: hard-label cross-entropy plus temperature-scaled KL to the teachers.

    total = (1 - alpha) * CE(student, hard; label_smoothing)
          + alpha * T^2 * sum_j w_j * KL( softmax(teacher_j / T) || softmax(student / T) )

Everything is computed in float32 whatever the model's dtype. Both terms are means over the
batch (KL is ``batchmean``), so a batch split into micro-batches gives the same gradient when
each micro-batch loss is scaled by its share of the rows (what HF Trainer does with equal
micro-batches and gradient accumulation).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _teacher_stack(teacher_logits: torch.Tensor, batch: int) -> torch.Tensor:
    """[B,3] or [B,k,3] -> float32 [B,k,3]."""
    t = teacher_logits.float()
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if t.dim() != 3 or t.shape[0] != batch or t.shape[-1] != 3:
        raise ValueError(f"teacher_logits must be [B,3] or [B,k,3] with B={batch}; got {tuple(teacher_logits.shape)}")
    return t


def _normalised_weights(weights: Sequence[float] | torch.Tensor | None, k: int, device) -> torch.Tensor:
    """k non-negative weights summing to 1 (equal when None)."""
    if weights is None:
        return torch.full((k,), 1.0 / k, device=device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device).flatten()
    if w.numel() != k:
        raise ValueError(f"teacher_weights has {w.numel()} entries for {k} teachers")
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError("teacher_weights must be non-negative with a positive sum")
    return w / w.sum()


def kl_to_teachers(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean over teachers of KL(softmax(teacher/T) || softmax(student/T)), batch-mean.

    student_logits: [B,3]; teacher_logits: [B,3] or [B,k,3]; returns a float32 scalar (not scaled by T^2).
    """
    s = student_logits.float()
    t = _teacher_stack(teacher_logits, s.shape[0])  # [B,k,3]
    w = _normalised_weights(teacher_weights, t.shape[1], s.device)  # [k]
    log_p_s = F.log_softmax(s / temperature, dim=-1).unsqueeze(1)  # [B,1,3]
    log_p_t = F.log_softmax(t / temperature, dim=-1)  # [B,k,3]
    kl_rows = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # [B,k]
    return (kl_rows * w).sum(-1).mean()


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(1-alpha)*CE + alpha*T^2*KL, fp32.

    student_logits: [B,3] (any float dtype); labels: long [B] in {0,1,2};
    teacher_logits: [B,3] or [B,k,3] (None allowed only when alpha == 0).
    Returns (total scalar, {"ce": scalar, "kl": scalar}) — ``kl`` is the unscaled KL term.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = student_logits.float()
    ce = F.cross_entropy(s, labels.long(), label_smoothing=label_smoothing)
    if teacher_logits is None:
        if alpha > 0:
            raise ValueError("alpha > 0 needs teacher_logits")
        kl = torch.zeros((), device=s.device)
    else:
        kl = kl_to_teachers(s, teacher_logits, temperature=temperature, teacher_weights=teacher_weights)
    total = (1.0 - alpha) * ce + alpha * (temperature**2) * kl
    return total, {"ce": ce, "kl": kl}


class DistillationLoss:
    """``loss_fn(logits[B,3], batch) -> (loss, {"ce", "kl"})`` for ``llm.train.train_classifier``: the mix
    :func:`distillation_loss` with fixed settings, reading ``batch["labels"]`` (long [B]) and
    ``batch["teacher_logits"]`` (float [B,3] or [B,k,3]; not read when alpha=0).

    It names itself (``name()``, in logs and the run record) and gives its own resume identity (``resume_key()``).
    """

    def __init__(self, *, alpha: float, temperature: float = 1.0, label_smoothing: float = 0.0,
                 teacher_weights: Sequence[float] | None = None) -> None:
        self.alpha, self.temperature, self.label_smoothing = alpha, temperature, label_smoothing
        self.teacher_weights = teacher_weights

    def name(self) -> str:
        w = None if self.teacher_weights is None else [round(float(x), 6) for x in self.teacher_weights]
        return f"distillation_loss(alpha={self.alpha},T={self.temperature},ls={self.label_smoothing},w={w})"

    def resume_key(self) -> str:
        # Frozen at the key this loss had before issue 15 moved it (then a closure in module `student.losses`, keyed
        # as module|name|closure values): folds finished before the move stay valid. Any setting change still
        # changes it.
        values = (self.alpha, self.label_smoothing, self.teacher_weights, self.temperature)
        return "|".join(["student.losses", self.name(), *map(repr, values)])

    def __call__(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = batch.get("teacher_logits") if self.alpha > 0 else None
        total, terms = distillation_loss(logits, batch["labels"], teacher, alpha=self.alpha,
                                         temperature=self.temperature, label_smoothing=self.label_smoothing,
                                         teacher_weights=self.teacher_weights)
        return total, {k: float(v.detach()) for k, v in terms.items()}
