"""Behaviour of student.losses.distillation_loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from arena_kd.llm.losses import hard_label_ce, loss_key
from arena_kd.student.losses import DistillationLoss, distillation_loss, kl_to_teachers


def _batch(b=6, k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, 3, generator=g)
    y = torch.randint(0, 3, (b,), generator=g)
    t = torch.randn(b, 3, generator=g) if k is None else torch.randn(b, k, 3, generator=g)
    return s, y, t


def test_identical_logits_give_zero_kl():
    s, y, _ = _batch()
    _, terms = distillation_loss(s, y, s.clone(), alpha=0.7, temperature=2.0)
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-7)


def test_alpha_zero_is_plain_cross_entropy():
    s, y, t = _batch()
    total, terms = distillation_loss(s, y, t, alpha=0.0, temperature=3.0)
    assert total.item() == pytest.approx(F.cross_entropy(s, y).item(), abs=1e-6)
    # no teacher needed at alpha = 0
    total2, _ = distillation_loss(s, y, None, alpha=0.0)
    assert total2.item() == pytest.approx(total.item(), abs=1e-7)
    with pytest.raises(ValueError):
        distillation_loss(s, y, None, alpha=0.5)


def test_alpha_one_t_one_equals_kl_div():
    s, y, t = _batch()
    total, _ = distillation_loss(s, y, t, alpha=1.0, temperature=1.0)
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
    assert total.item() == pytest.approx(ref.item(), abs=1e-6)


def test_hand_computed_value():
    # student logits 0,0,0 -> p_s = (1/3, 1/3, 1/3); label 0 -> CE = ln 3 = 1.0986123
    # teacher logits ln2,0,0 -> p_t = (2/4, 1/4, 1/4)
    # KL = 0.5 ln(0.5*3) + 2 * 0.25 ln(0.25*3) = 0.5 ln(1.5 * 0.75) = 0.5 ln 1.125 = 0.0588915
    # alpha = 0.5, T = 1: total = 0.5 * 1.0986123 + 0.5 * 0.0588915 = 0.5787519
    s = torch.zeros(1, 3)
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    total, terms = distillation_loss(s, torch.tensor([0]), t, alpha=0.5, temperature=1.0)
    assert terms["ce"].item() == pytest.approx(1.0986123, abs=1e-6)
    assert terms["kl"].item() == pytest.approx(0.0588915, abs=1e-6)
    assert total.item() == pytest.approx(0.5787519, abs=1e-6)


def test_temperature_scales_kl_by_t_squared():
    s, y, t = _batch()
    total, terms = distillation_loss(s, y, t, alpha=1.0, temperature=2.0)
    ref = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), reduction="batchmean", log_target=True)
    assert terms["kl"].item() == pytest.approx(ref.item(), abs=1e-6)
    assert total.item() == pytest.approx(4.0 * ref.item(), abs=1e-5)


def test_label_smoothing_on_hard_part():
    s, y, t = _batch()
    total, _ = distillation_loss(s, y, t, alpha=0.0, label_smoothing=0.1)
    assert total.item() == pytest.approx(F.cross_entropy(s, y, label_smoothing=0.1).item(), abs=1e-6)


def test_gradient_accumulation_matches_full_batch():
    s, y, t = _batch(b=8, k=2, seed=3)
    kw = dict(alpha=0.4, temperature=2.0, label_smoothing=0.05, teacher_weights=[1.0, 3.0])
    full = s.clone().requires_grad_(True)
    distillation_loss(full, y, t, **kw)[0].backward()
    acc = s.clone().requires_grad_(True)
    for sl in (slice(0, 3), slice(3, 8)):  # unequal micro-batches, scaled by their share of rows
        n = sl.stop - sl.start
        loss, _ = distillation_loss(acc[sl], y[sl], t[sl], **kw)
        (loss * n / 8).backward()
    assert torch.allclose(full.grad, acc.grad, atol=1e-6)


def test_multi_teacher_equal_weights_is_mean_of_kls():
    s, y, t = _batch(k=3)
    multi = kl_to_teachers(s, t)
    each = [kl_to_teachers(s, t[:, j]) for j in range(3)]
    assert multi.item() == pytest.approx(sum(e.item() for e in each) / 3, abs=1e-6)
    weighted = kl_to_teachers(s, t, teacher_weights=[2.0, 0.0, 2.0])
    assert weighted.item() == pytest.approx((each[0].item() + each[2].item()) / 2, abs=1e-6)


def test_half_precision_inputs_computed_in_fp32():
    s, y, t = _batch()
    total16, _ = distillation_loss(s.half(), y, t.half(), alpha=0.5)
    assert total16.dtype == torch.float32
    total32, _ = distillation_loss(s.half().float(), y, t.half().float(), alpha=0.5)
    assert total16.item() == pytest.approx(total32.item(), abs=1e-6)


def test_loss_fn_wrapper_reads_batch():
    s, y, t = _batch(k=2)
    fn = DistillationLoss(alpha=0.5, temperature=1.0, teacher_weights=[1, 1])
    loss, terms = fn(s, {"labels": y, "teacher_logits": t})
    ref, _ = distillation_loss(s, y, t, alpha=0.5)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-7)
    assert set(terms) == {"ce", "kl"} and all(isinstance(v, float) for v in terms.values())
    hard_only = DistillationLoss(alpha=0.0)
    loss0, _ = hard_only(s, {"labels": y})
    assert loss0.item() == pytest.approx(F.cross_entropy(s, y).item(), abs=1e-6)


def test_loss_fn_name_carries_its_settings():
    # llm.train keys its own resume on the loss: different settings must give different names and keys
    losses = [DistillationLoss(alpha=a, temperature=t) for a, t in ((0.5, 1.0), (0.7, 1.0), (0.5, 2.0))]
    assert len({f.name() for f in losses}) == 3 and len({loss_key(f) for f in losses}) == 3


def test_resume_keys_are_the_keys_written_before_the_losses_moved():
    # hand values: what llm.train.loss_key returned for these losses before issue 15 (closures in student.losses and
    # llm.train); a finished fold's train_result.json carries them, so they must not change
    fn = DistillationLoss(alpha=0.5, temperature=2.0, label_smoothing=0.1, teacher_weights=[0.25, 0.75])
    assert loss_key(fn) == ("student.losses|distillation_loss(alpha=0.5,T=2.0,ls=0.1,w=[0.25, 0.75])"
                            "|0.5|0.1|[0.25, 0.75]|2.0")
    assert loss_key(DistillationLoss(alpha=0.7)) == ("student.losses|distillation_loss(alpha=0.7,T=1.0,ls=0.0,w=None)"
                                                     "|0.7|0.0|None|1.0")
    assert loss_key(hard_label_ce) == "llm.train|hard_label_ce" and hard_label_ce.name() == "hard_label_ce"
    assert loss_key(None) == "ce"
