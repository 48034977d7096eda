"""Distillation losses over logits: hard-label cross-entropy, temperature-scaled KL to the teachers, and an optional
cosine term to the teachers' logits — in one of two named mixes.

``alpha`` mix (the default, :class:`DistillationLoss`), per row i:

    loss_i = (1 - alpha) * CE_i(student, hard; label_smoothing)
           + alpha * T^2 * sum_j w_j * KL( softmax(teacher_j / T) || softmax(student / T) )
           + cosine_weight * sum_j w_j * (1 - cos(student, teacher_j))            (cosine_weight = 0: no cosine term)

``winners`` mix (:class:`WinnersLoss`, the 1st place's: two teachers at once, T = 1), per row i with k teachers:

    loss_i = ( CE_i + k * sum_j w_j * KL_j + k * sum_j w_j * (1 - cos_j) ) / (1 + 2k)

With equal weights (w_j = 1/k) that is (CE + KL_1 + ... + KL_k + cos_1 + ... + cos_k) / (1 + 2k): k = 2 gives the
winners' "/ 5".

Rows without a hard label (label < 0, e.g. -100 from llm.pair_data for pseudo-labelled extra pairs) have no CE term:
only the soft terms, with the same weights, scaled by ``unlabelled_weight``. The total is the sum of the rows' losses
divided by the batch size B (not by the labelled count), so a batch split into micro-batches gives the same gradient
when each micro-batch loss is scaled by its share of the rows (what llm.trainer does with gradient accumulation).

Cosine: of the mean-centred logits. The soft labels carry each teacher's log-probabilities (teachers/combine.py), which
differ from its logits by a per-row constant; centring removes that constant (cos is not shift-invariant), so the
stored log-probabilities stand exactly for the teacher's logits. A row whose centred logits are all zero (a uniform
answer) has cos = 0 by convention (torch's eps clamp): its cosine loss is 1 whatever the other side.

Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

Weights = Sequence[float] | torch.Tensor | None


def _teacher_stack(teacher_logits: torch.Tensor, batch: int) -> torch.Tensor:
    """[B,3] or [B,k,3] -> float32 [B,k,3]."""
    t = teacher_logits.float()
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if t.dim() != 3 or t.shape[0] != batch or t.shape[-1] != 3:
        raise ValueError(f"teacher_logits must be [B,3] or [B,k,3] with B={batch}; got {tuple(teacher_logits.shape)}")
    return t


def _normalised_weights(weights: Weights, k: int, device) -> torch.Tensor:
    """k non-negative weights summing to 1 (equal when None)."""
    if weights is None:
        return torch.full((k,), 1.0 / k, device=device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device).flatten()
    if w.numel() != k:
        raise ValueError(f"teacher_weights has {w.numel()} entries for {k} teachers")
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError("teacher_weights must be non-negative with a positive sum")
    return w / w.sum()


def kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
            teacher_weights: Weights = None) -> torch.Tensor:
    """float32 [B]: per row, the weighted mean over teachers of KL(softmax(teacher/T) || softmax(student/T))."""
    s = student_logits.float()
    t = _teacher_stack(teacher_logits, s.shape[0])  # [B,k,3]
    w = _normalised_weights(teacher_weights, t.shape[1], s.device)  # [k]
    log_p_s = F.log_softmax(s / temperature, dim=-1).unsqueeze(1)  # [B,1,3]
    log_p_t = F.log_softmax(t / temperature, dim=-1)  # [B,k,3]
    return ((log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * w).sum(-1)


def kl_to_teachers(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                   teacher_weights: Weights = None) -> torch.Tensor:
    """Batch mean of :func:`kl_rows` (a float32 scalar, not scaled by T^2)."""
    return kl_rows(student_logits, teacher_logits, temperature=temperature, teacher_weights=teacher_weights).mean()


def cosine_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                teacher_weights: Weights = None) -> torch.Tensor:
    """float32 [B]: per row, the weighted mean over teachers of 1 - cos(centred student, centred teacher_j) (module
    doc: centring makes a teacher's log-probabilities and its logits the same)."""
    s = student_logits.float()
    t = _teacher_stack(teacher_logits, s.shape[0])  # [B,k,3]
    w = _normalised_weights(teacher_weights, t.shape[1], s.device)
    s_c = (s - s.mean(-1, keepdim=True)).unsqueeze(1)  # [B,1,3]
    t_c = t - t.mean(-1, keepdim=True)
    return ((1.0 - F.cosine_similarity(s_c, t_c, dim=-1)) * w).sum(-1)


def cosine_to_teachers(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                       teacher_weights: Weights = None) -> torch.Tensor:
    """Batch mean of :func:`cosine_rows` (a float32 scalar)."""
    return cosine_rows(student_logits, teacher_logits, teacher_weights=teacher_weights).mean()


def _ce_rows(s: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE per row with 0 where unlabelled, labelled mask) for labels long [B] (< 0 = no hard label)."""
    labelled = labels >= 0
    ce = F.cross_entropy(s, labels.long().clamp(min=0), reduction="none", label_smoothing=label_smoothing)
    return ce * labelled, labelled


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the rows of ``mask`` (0 when none): the logged term of a subset of rows."""
    return values.sum() / mask.sum().clamp(min=1)


def _combine(rows: torch.Tensor, labelled: torch.Tensor, unlabelled_weight: float) -> torch.Tensor:
    """Sum of the row losses (unlabelled rows scaled) over the batch size B (module doc: grad-accum invariant)."""
    if unlabelled_weight != 1.0:
        rows = torch.where(labelled, rows, rows * unlabelled_weight)
    return rows.sum() / rows.shape[0]


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    teacher_weights: Weights = None,
    cosine_weight: float = 0.0,
    unlabelled_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ``alpha`` mix (module doc), fp32.

    student_logits: [B,3] (any float dtype); labels: long [B] in {0,1,2}, < 0 for a row without a hard label;
    teacher_logits: [B,3] or [B,k,3] (None allowed only when alpha == 0 and cosine_weight == 0).
    Returns (total scalar, terms): ``ce`` (mean over the labelled rows), ``kl`` (unscaled, mean over all rows) and,
    with a cosine term, ``cos`` (mean over all rows).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if cosine_weight < 0 or unlabelled_weight < 0:
        raise ValueError("cosine_weight and unlabelled_weight must be >= 0")
    s = student_logits.float()
    ce, labelled = _ce_rows(s, labels, label_smoothing)
    rows = (1.0 - alpha) * ce
    zero = torch.zeros(s.shape[0], device=s.device)
    if teacher_logits is None:
        if alpha > 0 or cosine_weight > 0:
            raise ValueError("alpha > 0 or cosine_weight > 0 needs teacher_logits")
        kl = zero
    else:
        kl = kl_rows(s, teacher_logits, temperature=temperature, teacher_weights=teacher_weights)
        rows = rows + alpha * (temperature**2) * kl
    terms = {"ce": _mean_over(ce, labelled), "kl": kl.mean()}
    if cosine_weight > 0:
        cos = cosine_rows(s, teacher_logits, teacher_weights=teacher_weights)
        rows = rows + cosine_weight * cos
        terms["cos"] = cos.mean()
    return _combine(rows, labelled, unlabelled_weight), terms


def winners_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    teacher_weights: Weights = None,
    unlabelled_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ``winners`` mix (module doc), T = 1, fp32. Returns (total, {"ce", "kl", "cos"}): ``kl`` and ``cos`` are the
    weighted means over teachers (so the total is (ce + k·kl + k·cos) / (1 + 2k) on fully labelled batches)."""
    if unlabelled_weight < 0:
        raise ValueError("unlabelled_weight must be >= 0")
    s = student_logits.float()
    k = _teacher_stack(teacher_logits, s.shape[0]).shape[1]
    ce, labelled = _ce_rows(s, labels, 0.0)
    kl = kl_rows(s, teacher_logits, teacher_weights=teacher_weights)
    cos = cosine_rows(s, teacher_logits, teacher_weights=teacher_weights)
    rows = (ce + k * kl + k * cos) / (1 + 2 * k)
    return _combine(rows, labelled, unlabelled_weight), {"ce": _mean_over(ce, labelled), "kl": kl.mean(),
                                                         "cos": cos.mean()}


def _rounded(weights: Sequence[float] | None) -> list[float] | None:
    return None if weights is None else [round(float(x), 6) for x in weights]


class DistillationLoss:
    """``loss_fn(logits[B,3], batch) -> (loss, {"ce", "kl"[, "cos"]})`` for ``llm.train.train_classifier``: the
    ``alpha`` mix :func:`distillation_loss` with fixed settings, reading ``batch["labels"]`` (long [B]; < 0 = no hard
    label) and ``batch["teacher_logits"]`` (float [B,3] or [B,k,3]; not read when alpha = 0 and no cosine term).

    It names itself (``name()``, in logs and the run record) and gives its own resume identity (``resume_key()``).
    """

    takes_unlabelled_rows = True  # rows with label < 0 get the soft terms only (llm.train lets them through)

    def __init__(self, *, alpha: float, temperature: float = 1.0, label_smoothing: float = 0.0,
                 teacher_weights: Sequence[float] | None = None, cosine_weight: float = 0.0,
                 unlabelled_weight: float = 1.0) -> None:
        self.alpha, self.temperature, self.label_smoothing = alpha, temperature, label_smoothing
        self.teacher_weights = teacher_weights
        self.cosine_weight, self.unlabelled_weight = cosine_weight, unlabelled_weight

    def _added(self) -> list[tuple[str, float]]:
        """Settings added after the resume keys were frozen: named only when not at their default, so the keys of
        runs made before them stay what they were."""
        return [(n, v) for n, v, default in (("cos", self.cosine_weight, 0.0),
                                             ("unlabelled_w", self.unlabelled_weight, 1.0)) if v != default]

    def name(self) -> str:
        added = "".join(f",{n}={v}" for n, v in self._added())
        return (f"distillation_loss(alpha={self.alpha},T={self.temperature},ls={self.label_smoothing},"
                f"w={_rounded(self.teacher_weights)}{added})")

    def resume_key(self) -> str:
        # Frozen at the key this loss had before issue 15 moved it (then a closure in module `student.losses`, keyed
        # as module|name|closure values): folds finished before the move stay valid. Any setting change still
        # changes it (the added settings through name()).
        values = (self.alpha, self.label_smoothing, self.teacher_weights, self.temperature)
        return "|".join(["student.losses", self.name(), *map(repr, values)])

    def __call__(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        reads_teacher = self.alpha > 0 or self.cosine_weight > 0
        teacher = batch.get("teacher_logits") if reads_teacher else None
        total, terms = distillation_loss(logits, batch["labels"], teacher, alpha=self.alpha,
                                         temperature=self.temperature, label_smoothing=self.label_smoothing,
                                         teacher_weights=self.teacher_weights, cosine_weight=self.cosine_weight,
                                         unlabelled_weight=self.unlabelled_weight)
        return total, {k: float(v.detach()) for k, v in terms.items()}


class WinnersLoss:
    """``loss_fn`` of the ``winners`` mix (:func:`winners_loss`): needs ``batch["teacher_logits"]`` ([B,k,3] for k
    teachers; [B,3] counts as one). Names itself and gives its resume identity like :class:`DistillationLoss`."""

    takes_unlabelled_rows = True

    def __init__(self, *, teacher_weights: Sequence[float] | None = None, unlabelled_weight: float = 1.0) -> None:
        self.teacher_weights, self.unlabelled_weight = teacher_weights, unlabelled_weight

    def name(self) -> str:
        u = f",unlabelled_w={self.unlabelled_weight}" if self.unlabelled_weight != 1.0 else ""
        return f"winners_loss((CE+k*KL+k*cos)/(1+2k),T=1,w={_rounded(self.teacher_weights)}{u})"

    def resume_key(self) -> str:
        return f"student.losses|{self.name()}"

    def __call__(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.get("teacher_logits") is None:
            raise ValueError("the winners loss needs teacher_logits in the batch")
        total, terms = winners_loss(logits, batch["labels"], batch["teacher_logits"],
                                    teacher_weights=self.teacher_weights, unlabelled_weight=self.unlabelled_weight)
        return total, {k: float(v.detach()) for k, v in terms.items()}
