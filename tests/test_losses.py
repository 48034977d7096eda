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


# --------------------------------------------------------------------------- issue 21: cosine term, winners' mix,
# rows without a hard label

from arena_kd.student.losses import WinnersLoss, cosine_to_teachers, winners_loss  # noqa: E402

LN2 = math.log(2.0)


def test_cosine_identical_inputs_give_zero_and_ignore_shift_and_scale():
    s, _, _ = _batch()
    assert cosine_to_teachers(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # a teacher's log-probabilities stand for its logits (a per-row shift), and scale does not matter
    assert cosine_to_teachers(s, F.log_softmax(3.0 * s, -1)).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_to_teachers(s, -s).item() == pytest.approx(2.0, abs=1e-6)  # opposite direction: 1 - (-1)


def test_cosine_hand_value():
    # student (1,0,0) centred = (2/3,-1/3,-1/3); teacher (0,ln2,0) centred = ln2 * (-1/3,2/3,-1/3):
    # cos = (-2/9 - 2/9 + 1/9) / (6/9) = -0.5 -> loss 1.5; teacher (ln2,0,0) points the student's way: loss 0
    s = torch.tensor([[1.0, 0.0, 0.0]])
    assert cosine_to_teachers(s, torch.tensor([[0.0, LN2, 0.0]])).item() == pytest.approx(1.5, abs=1e-6)
    t = torch.tensor([[[LN2, 0.0, 0.0], [0.0, LN2, 0.0]]])
    assert cosine_to_teachers(s, t).item() == pytest.approx(0.75, abs=1e-6)  # mean over the two teachers
    assert cosine_to_teachers(s, t, teacher_weights=[3.0, 1.0]).item() == pytest.approx(0.375, abs=1e-6)


def test_alpha_mix_cosine_term_is_added_and_logged():
    s, y, t = _batch(k=2)
    base, terms0 = distillation_loss(s, y, t, alpha=0.3)
    total, terms = distillation_loss(s, y, t, alpha=0.3, cosine_weight=0.5)
    assert "cos" not in terms0 and set(terms) == {"ce", "kl", "cos"}
    assert total.item() == pytest.approx(base.item() + 0.5 * cosine_to_teachers(s, t).item(), abs=1e-6)
    # alpha = 0 and no cosine term: plain CE, the teacher unread
    assert distillation_loss(s, y, None, alpha=0.0)[0].item() == pytest.approx(F.cross_entropy(s, y).item(), abs=1e-6)
    with pytest.raises(ValueError):
        distillation_loss(s, y, None, alpha=0.0, cosine_weight=0.1)


def test_winners_mix_hand_value():
    # student (1,0,0), label 0: CE = ln(e+2) - 1 = 0.5514447; teachers (ln2,0,0) and (0,ln2,0):
    # KL_1 = 0.5 ln(0.5/p0) + 0.5 ln(0.25/p1) = 0.0117239, KL_2 = 0.2617239 (p = (e,1,1)/(e+2)); cos_1 = 0, cos_2 = 1.5
    # (CE + KL_1 + KL_2 + cos_1 + cos_2) / 5 = 0.4649785
    s = torch.tensor([[1.0, 0.0, 0.0]])
    t = torch.tensor([[[LN2, 0.0, 0.0], [0.0, LN2, 0.0]]])
    total, terms = winners_loss(s, torch.tensor([0]), t)
    assert terms["ce"].item() == pytest.approx(0.5514447, abs=1e-6)
    assert terms["kl"].item() == pytest.approx((0.0117239 + 0.2617239) / 2, abs=1e-6)
    assert terms["cos"].item() == pytest.approx(0.75, abs=1e-6)
    assert total.item() == pytest.approx(0.4649785, abs=1e-6)


def test_winners_mix_identical_teachers_leave_ce_over_five():
    s, y, _ = _batch()
    t = torch.stack([s, s], dim=1)
    total, _ = winners_loss(s, y, t)
    assert total.item() == pytest.approx(F.cross_entropy(s, y).item() / 5, abs=1e-6)


def test_winners_mix_gradient_accumulation_matches_full_batch():
    s, y, t = _batch(b=8, k=2, seed=5)
    y[[1, 6]] = -100  # rows without a hard label in both micro-batches
    full = s.clone().requires_grad_(True)
    winners_loss(full, y, t, teacher_weights=[1.0, 2.0], unlabelled_weight=0.5)[0].backward()
    acc = s.clone().requires_grad_(True)
    for sl in (slice(0, 5), slice(5, 8)):
        n = sl.stop - sl.start
        (winners_loss(acc[sl], y[sl], t[sl], teacher_weights=[1.0, 2.0], unlabelled_weight=0.5)[0] * n / 8).backward()
    assert torch.allclose(full.grad, acc.grad, atol=1e-6)


@pytest.mark.parametrize("missing", [-1, -100])
def test_rows_without_a_hard_label_contribute_only_the_soft_terms(missing):
    # row 0: student (1,0,0), label 0, teacher (ln2,0,0): CE 0.5514447, KL 0.0117239
    # row 1: student (0,0,0), no label, teacher (ln2,0,0): KL 0.5 ln 1.125 = 0.0588915, no CE
    # alpha 0.5: ((0.5 * 0.5514447 + 0.5 * 0.0117239) + 0.5 * 0.0588915) / 2 = 0.1555150 (the sum over B = 2 rows)
    s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([[LN2, 0.0, 0.0], [LN2, 0.0, 0.0]])
    y = torch.tensor([0, missing])
    total, terms = distillation_loss(s, y, t, alpha=0.5)
    assert total.item() == pytest.approx(0.1555150, abs=1e-6)
    assert terms["ce"].item() == pytest.approx(0.5514447, abs=1e-6)  # logged over the labelled row only
    assert terms["kl"].item() == pytest.approx((0.0117239 + 0.0588915) / 2, abs=1e-6)
    # extra_pairs.weight scales only the unlabelled row: 0.5 * 0.0588915 counted twice -> 0.1702379
    weighted, _ = distillation_loss(s, y, t, alpha=0.5, unlabelled_weight=2.0)
    assert weighted.item() == pytest.approx(0.1702379, abs=1e-6)
    # the unlabelled row's gradient is the KL's alone: with the teacher equal to the student it is zero
    s2 = s.clone().requires_grad_(True)
    distillation_loss(s2, y, torch.stack([t[0], s[1]]), alpha=0.5)[0].backward()
    assert torch.allclose(s2.grad[1], torch.zeros(3), atol=1e-7)


def test_all_unlabelled_batch_is_pure_kl_and_alpha_zero_is_zero():
    s, _, t = _batch()
    y = torch.full((s.shape[0],), -100)
    total, terms = distillation_loss(s, y, t, alpha=1.0)
    assert total.item() == pytest.approx(kl_to_teachers(s, t).item(), abs=1e-6) and terms["ce"].item() == 0.0
    assert distillation_loss(s, y, None, alpha=0.0)[0].item() == 0.0


def test_gradient_accumulation_with_unlabelled_rows_matches_full_batch():
    s, y, t = _batch(b=8, k=2, seed=7)
    y[[0, 5, 6]] = -1
    kw = dict(alpha=0.4, temperature=2.0, teacher_weights=[1.0, 3.0], cosine_weight=0.2, unlabelled_weight=0.7)
    full = s.clone().requires_grad_(True)
    distillation_loss(full, y, t, **kw)[0].backward()
    acc = s.clone().requires_grad_(True)
    for sl in (slice(0, 3), slice(3, 8)):
        n = sl.stop - sl.start
        (distillation_loss(acc[sl], y[sl], t[sl], **kw)[0] * n / 8).backward()
    assert torch.allclose(full.grad, acc.grad, atol=1e-6)


def test_added_settings_name_themselves_and_keep_the_old_keys_at_their_defaults():
    old = "student.losses|distillation_loss(alpha=0.7,T=1.0,ls=0.0,w=None)|0.7|0.0|None|1.0"
    assert loss_key(DistillationLoss(alpha=0.7, cosine_weight=0.0, unlabelled_weight=1.0)) == old
    keys = {loss_key(f) for f in (DistillationLoss(alpha=0.7), DistillationLoss(alpha=0.7, cosine_weight=0.1),
                                  DistillationLoss(alpha=0.7, unlabelled_weight=0.5), WinnersLoss(),
                                  WinnersLoss(teacher_weights=[1, 2]), WinnersLoss(unlabelled_weight=0.5))}
    assert len(keys) == 6
    assert WinnersLoss().name().startswith("winners_loss(") and DistillationLoss(alpha=0.7).takes_unlabelled_rows


def test_winners_loss_fn_reads_batch_and_logs_each_term():
    s, y, t = _batch(k=2)
    loss, terms = WinnersLoss()(s, {"labels": y, "teacher_logits": t})
    assert loss.item() == pytest.approx(winners_loss(s, y, t)[0].item(), abs=1e-7)
    assert set(terms) == {"ce", "kl", "cos"} and all(isinstance(v, float) for v in terms.values())
    with pytest.raises(ValueError):
        WinnersLoss()(s, {"labels": y})
