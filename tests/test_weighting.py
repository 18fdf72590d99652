"""Confidence weights: formulas, batch-mean-1 normalisation, the all-zero case, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mad_distill.weighting import confidence_weights, normalize_weights, raw_confidence

SETTINGS = settings(max_examples=30, deadline=None)


def _brute_raw(logits, labels, mode, gamma):
    out = []
    for b in range(logits.shape[0]):
        p = torch.softmax(logits[b].double(), -1).tolist()
        c = len(p)
        if mode == "uniform":
            out.append(1.0)
        elif mode == "gt_prob":
            out.append(p[int(labels[b])] ** gamma)
        elif mode == "correct":
            out.append(float(max(range(c), key=lambda i: (p[i], -i)) == int(labels[b])))
        else:
            h = -sum(q * math.log(q) for q in p if q > 0)
            out.append(1.0 if c == 1 else max(0.0, 1 - h / math.log(c)) ** gamma)
    return torch.tensor(out)


@SETTINGS
@given(
    b=st.integers(1, 6),
    c=st.integers(1, 7),
    mode=st.sampled_from(["gt_prob", "entropy", "correct", "uniform"]),
    gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    seed=st.integers(0, 9999),
)
def test_weights_match_formula_and_have_mean_one(b, c, mode, gamma, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g) * 3
    labels = torch.randint(0, c, (b,), generator=g)
    raw = raw_confidence(logits, labels, mode, gamma)
    expected = _brute_raw(logits, labels, mode, gamma).float()
    assert torch.allclose(raw, expected, atol=1e-5)
    w = confidence_weights(logits, labels, mode, gamma)
    assert w.shape == (b,) and w.dtype == torch.float32 and (w >= 0).all()
    if expected.sum() > 0:
        assert float(w.mean()) == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(w, expected / expected.mean(), atol=1e-4)
    else:
        assert torch.equal(w, torch.zeros(b))


def test_all_zero_weights_give_zeros_not_nan():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    w = confidence_weights(logits, torch.tensor([1, 0]), "correct")
    assert torch.equal(w, torch.zeros(2))
    assert torch.equal(normalize_weights(torch.zeros(3)), torch.zeros(3))


def test_probs_input_and_detached():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    w = confidence_weights(logits, labels)
    assert not w.requires_grad
    w2 = confidence_weights(torch.softmax(logits.detach(), -1), labels, probs=True)
    assert torch.allclose(w, w2, atol=1e-6)


def test_entropy_needs_no_labels_and_single_class():
    assert torch.equal(raw_confidence(torch.randn(3, 1), None, "entropy"), torch.ones(3))
    # uniform teacher -> zero confidence; one-hot teacher -> full confidence
    raw = raw_confidence(torch.tensor([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0]]), None, "entropy")
    assert raw.tolist() == pytest.approx([0.0, 1.0], abs=1e-6)


def test_bf16_logits():
    w = confidence_weights(torch.randn(4, 5).bfloat16(), torch.tensor([0, 1, 2, 3]))
    assert w.dtype == torch.float32 and float(w.mean()) == pytest.approx(1.0, abs=1e-5)


def test_normalize_with_all_reduce_uses_global_mean():
    shard_a, shard_b = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0, 2.0])
    global_mean = float(torch.cat([shard_a, shard_b]).mean())

    def other_stats(w):
        return torch.stack([w.sum(), torch.tensor(float(w.numel()))])

    returned = normalize_weights(shard_a, all_reduce=lambda t: t + other_stats(shard_b))
    assert torch.allclose(returned, shard_a / global_mean)

    def in_place(t):  # like torch.distributed.all_reduce: sums in place, returns None/Work
        t.add_(other_stats(shard_a))

    assert torch.allclose(normalize_weights(shard_b, all_reduce=in_place), shard_b / global_mean)
    # zero locally but not globally: still zeros locally, and no NaN
    zeros = normalize_weights(torch.zeros(2), all_reduce=lambda t: t + other_stats(shard_a))
    assert torch.equal(zeros, torch.zeros(2))


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((torch.randn(2, 3), None, "gt_prob"), {}, ValueError, "labels are required"),
        ((torch.randn(2, 3), None, "correct"), {}, ValueError, "labels are required"),
        ((torch.randn(2, 3), torch.tensor([0, 3])), {}, ValueError, r"labels must be class"),
        ((torch.randn(2, 3), torch.tensor([-2, 0])), {}, ValueError, r"labels must be class"),
        (
            (torch.randn(2, 3), torch.tensor([-1, 0])),
            {"ignore_index": None},
            ValueError,
            r"labels must be class",
        ),
        ((torch.randn(2, 3), torch.tensor([0.0, 1.0])), {}, TypeError, "labels must be an int"),
        ((torch.randn(2, 3), torch.tensor([0, 1, 2])), {}, ValueError, r"labels must be \[B\]"),
        ((torch.randn(2, 3), None, "confidence"), {}, ValueError, "mode must be one of"),
        ((torch.randn(2, 3), None, "entropy", -1.0), {}, ValueError, "gamma"),
        ((torch.randn(2, 3), None, "entropy", float("nan")), {}, ValueError, "gamma"),
        ((torch.randn(2, 3, 1), None, "uniform"), {}, ValueError, r"teacher_logits must be \[B"),
        ((torch.ones(2, 3, dtype=torch.long), None, "uniform"), {}, TypeError, "floating"),
        ((torch.tensor([[0.0, float("nan")]]), None, "entropy"), {}, ValueError, "NaN or inf"),
        ((torch.tensor([[0.5, 0.6]]), None, "entropy"), {"probs": True}, ValueError, "sum to 1"),
    ],
)
def test_bad_inputs(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        confidence_weights(*args, **kwargs)


def test_normalize_bad_shape():
    with pytest.raises(ValueError, match=r"weights must be \[B\]"):
        normalize_weights(torch.ones(2, 2))


@pytest.mark.parametrize("mode", ["gt_prob", "correct"])
def test_ignored_labels_get_zero_weight(mode):
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, -1, 2])
    raw = raw_confidence(logits, labels, mode)
    assert raw[1] == 0
    expected = raw_confidence(logits[[0, 2]], labels[[0, 2]], mode)
    assert torch.equal(raw[[0, 2]], expected)
    w = confidence_weights(logits, labels, mode)
    assert w[1] == 0 and torch.isclose(w.mean(), torch.tensor(1.0))


@SETTINGS
@given(
    b=st.integers(1, 6),
    c=st.integers(1, 7),
    gamma=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 9999),
)
def test_gain_is_the_teachers_lead_on_the_true_class_unnormalised(b, c, gamma, seed):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, c, generator=g) * 3
    student = torch.randn(b, c, generator=g) * 3
    labels = torch.randint(0, c, (b,), generator=g)
    w = confidence_weights(teacher, labels, "gain", gamma, student_logits=student)
    p_t = torch.softmax(teacher.double(), -1)
    p_s = torch.softmax(student.double(), -1)
    lead = (p_t - p_s)[torch.arange(b), labels].clamp(min=0) ** gamma
    torch.testing.assert_close(w, lead.float(), atol=1e-5, rtol=1e-4)  # no mean-1 rescaling
    assert not w.requires_grad


def test_gain_fades_when_the_student_overtakes_the_teacher():
    teacher = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0])
    behind = confidence_weights(teacher, labels, "gain", student_logits=torch.zeros(2, 2))
    ahead = confidence_weights(teacher, labels, "gain", student_logits=torch.tensor([[9.0, 0]] * 2))
    assert (behind > 0.3).all() and torch.equal(ahead, torch.zeros(2))
    ignored = confidence_weights(
        teacher, torch.tensor([-1, 0]), "gain", student_logits=torch.zeros(2, 2)
    )
    assert ignored[0] == 0 and ignored[1] > 0


def test_gain_needs_matching_student_logits():
    teacher, labels = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="student's task logits"):
        confidence_weights(teacher, labels, "gain")
    with pytest.raises(ValueError, match=r"\[B, C\] = \(2, 3\)"):
        confidence_weights(teacher, labels, "gain", student_logits=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        confidence_weights(
            teacher, labels, "gain", student_logits=torch.tensor([[float("nan"), 0, 0]] * 2)
        )
    with pytest.raises(ValueError, match="labels are required"):
        confidence_weights(teacher, None, "gain", student_logits=torch.zeros(2, 3))
