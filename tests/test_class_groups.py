"""Class groups: group logits, labels, the teacher's label, and the config field."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mad_distill.class_groups import (
    best_class_in_best_group,
    check_class_groups,
    group_class_logits,
    group_labels,
)
from mad_distill.config import MADConfig


@st.composite
def _grouped_logits(draw):
    c = draw(st.integers(2, 9))
    g = draw(st.integers(2, c))
    # every group used: the first g classes seed the groups, the rest go anywhere
    groups = list(range(g)) + [draw(st.integers(0, g - 1)) for _ in range(c - g)]
    perm = draw(st.permutations(range(c)))
    groups = [groups[i] for i in perm]
    b = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    logits = torch.randn(b, c, generator=torch.Generator().manual_seed(seed)) * 4
    return logits, groups


@settings(max_examples=40, deadline=None)
@given(_grouped_logits(), st.sampled_from([0.5, 1.0, 2.0, 3.7]))
def test_group_softmax_is_the_sum_of_class_probabilities(data, tau):
    logits, groups = data
    got = group_class_logits(logits, groups, tau).div(tau).softmax(-1)
    p = logits.div(tau).softmax(-1)
    want = torch.stack(
        [p[:, [c for c, g in enumerate(groups) if g == k]].sum(-1) for k in range(max(groups) + 1)],
        dim=-1,
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_group_logits_are_differentiable_and_finite():
    z = torch.tensor([[1.0, -2.0, 30.0], [-50.0, 0.0, 2.0]], requires_grad=True)
    g = group_class_logits(z, [0, 0, 1], tau=2.0)
    assert torch.isfinite(g).all()
    g.sum().backward()
    # d/dz_c of tau*LSE(z/tau) is the class' share of its group: each group's grads sum to 1
    torch.testing.assert_close(z.grad[:, :2].sum(-1), torch.ones(2))
    torch.testing.assert_close(z.grad[:, 2], torch.ones(2))


def test_group_labels_keep_ignore_index():
    y = torch.tensor([0, 1, 2, -1])
    assert group_labels(y, [0, 0, 1]).tolist() == [0, 0, 1, -1]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        group_labels(torch.tensor([3]), [0, 0, 1])


def test_teacher_label_is_from_the_best_group():
    # class 2 alone is the most probable class (0.4), but group 0 holds 0.6
    z = torch.tensor([[0.35, 0.25, 0.40], [0.05, 0.05, 0.90]]).log()
    assert z.argmax(-1).tolist() == [2, 2]
    assert best_class_in_best_group(z, [0, 0, 1]).tolist() == [0, 2]


@pytest.mark.parametrize(
    "bad, err, match",
    [
        ("001", TypeError, "list of group ids"),
        ([0, -1, 1], ValueError, r"class_groups\[1\]"),
        ([0, True], ValueError, r"class_groups\[1\]"),
        ([0, 0, 0], ValueError, "at least two groups"),
        ([0, 2, 2], ValueError, "every group id"),
    ],
)
def test_bad_groups_name_the_field(bad, err, match):
    with pytest.raises(err, match=match):
        check_class_groups(bad)


def test_wrong_number_of_classes_names_class_groups():
    with pytest.raises(ValueError, match="class_groups has 3 entries but the logits have C = 4"):
        group_class_logits(torch.zeros(2, 4), [0, 0, 1])


def test_config_field_round_trips_and_is_checked(tiny_clip):
    cfg = MADConfig(teachers={"clip": tiny_clip}, class_groups=[0, 0, 1])
    assert cfg.class_groups == (0, 0, 1)
    again = MADConfig.from_dict(cfg.to_dict())
    assert again.class_groups == (0, 0, 1)
    assert MADConfig(teachers={"clip": tiny_clip}).to_dict()["class_groups"] is None
    with pytest.raises(ValueError, match="class_groups must name at least two groups"):
        MADConfig(teachers={"clip": tiny_clip}, class_groups=[1, 1])
