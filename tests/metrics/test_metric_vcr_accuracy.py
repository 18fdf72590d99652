import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from mad_distill.metrics import SNLI_VE_CLASSES, ClassAccuracy, SNLIVEAccuracy, VCRAccuracy


def test_vcr_q2a_qa2r_q2ar_by_hand():
    m = VCRAccuracy()
    # example: 0 both right, 1 answer right only, 2 rationale right only, 3 both wrong
    a_scores = torch.tensor(
        [[0.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]]
    )
    a_labels = torch.tensor([1, 0, 2, 3])
    r_preds = torch.tensor([2, 1, 3, 0])
    r_labels = torch.tensor([2, 0, 3, 1])
    m.update(a_scores, a_labels, r_preds, r_labels)
    out = m.compute()
    assert out["q2a"].item() == pytest.approx(0.5)
    assert out["qa2r"].item() == pytest.approx(0.5)
    assert out["q2ar"].item() == pytest.approx(0.25)


def test_vcr_answer_only_batches_leave_q2ar_untouched():
    m = VCRAccuracy()
    m.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    out = m.compute()
    assert out["q2a"].item() == 0.5
    assert math.isnan(out["qa2r"].item()) and math.isnan(out["q2ar"].item())


def test_vcr_errors():
    m = VCRAccuracy()
    with pytest.raises(ValueError, match="answer_labels"):
        m.update(torch.tensor([0]), torch.tensor([4]))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        m.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ"):
        m.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([0, 1]))


def test_vcr_merge_is_exact():
    g = torch.Generator().manual_seed(0)
    ap, al = torch.randint(0, 4, (10,), generator=g), torch.randint(0, 4, (10,), generator=g)
    rp, rl = torch.randint(0, 4, (10,), generator=g), torch.randint(0, 4, (10,), generator=g)
    whole, r0, r1 = VCRAccuracy(), VCRAccuracy(), VCRAccuracy()
    whole.update(ap, al, rp, rl)
    r0.update(ap[:3], al[:3], rp[:3], rl[:3])
    r1.update(ap[3:], al[3:], rp[3:], rl[3:])
    r0.merge_state(r1)
    for k, v in whole.compute().items():
        assert torch.equal(v, r0.compute()[k])


def test_class_accuracy_matches_torchmetrics():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(50, 3, generator=g)
    target = torch.randint(0, 3, (50,), generator=g)
    m = SNLIVEAccuracy()
    m.update(scores[:20], target[:20])
    m.update(scores[20:].argmax(-1), target[20:])
    out = m.compute()
    micro = MulticlassAccuracy(3, average="micro")(scores, target)
    per_class = MulticlassAccuracy(3, average=None)(scores, target)
    assert out["acc"].item() == pytest.approx(micro.item())
    for i, name in enumerate(SNLI_VE_CLASSES):
        assert out[f"acc_{name}"].item() == pytest.approx(per_class[i].item())


def test_class_accuracy_ignore_index_and_errors():
    m = SNLIVEAccuracy()  # ignores -1 (unlabelled)
    m.update(torch.tensor([0, 1, 2]), torch.tensor([0, -1, 1]))
    assert m.compute()["acc"].item() == 0.5
    with pytest.raises(ValueError, match="outside"):
        ClassAccuracy(3).update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="class_names"):
        ClassAccuracy(3, ["a", "b"])
    with pytest.raises(TypeError, match="integer"):
        ClassAccuracy(3).update(torch.tensor([0.5]), torch.tensor([0]))
