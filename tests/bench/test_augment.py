"""Augmented views for the world runner: the option's checks and the per-image policy."""

from __future__ import annotations

import pytest
import torch

from mad_distill.bench.augment import (
    AUGMENTATIONS,
    augment_images,
    check_augment,
    create_augmentation,
)


def test_check_augment_completes_and_names_bad_fields():
    assert check_augment(None, 0.2) is None
    assert check_augment({"kind": "augmix"}, 0.2) == {
        "kind": "augmix",
        "labeled": False,
        "unlabeled": True,
    }
    assert check_augment({"kind": "randaugment", "labeled": True, "unlabeled": False}, 0)["labeled"]
    with pytest.raises(ValueError, match="augment.kind: unknown augmentation 'mixup'"):
        check_augment({"kind": "mixup"}, 0.2)
    with pytest.raises(ValueError, match="augment.kind is required"):
        check_augment({"unlabeled": True}, 0.2)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['severity'\]"):
        check_augment({"kind": "augmix", "severity": 3}, 0.2)
    with pytest.raises(ValueError, match="augment.labeled must be true or false"):
        check_augment({"kind": "augmix", "labeled": "yes"}, 0.2)
    with pytest.raises(ValueError, match="neither labeled nor unlabeled"):
        check_augment({"kind": "augmix", "unlabeled": False}, 0.2)
    with pytest.raises(ValueError, match="no unlabelled inputs"):
        check_augment({"kind": "augmix"}, 0)
    with pytest.raises(TypeError, match="augment must be a mapping"):
        check_augment("augmix", 0.2)


@pytest.mark.parametrize("kind", sorted(AUGMENTATIONS))
def test_each_image_gets_its_own_draw_and_a_seed_repeats_it(kind):
    torch.manual_seed(0)
    one = torch.rand(1, 3, 24, 24)
    images = one.expand(16, 3, 24, 24).contiguous()
    policy = create_augmentation(kind)
    torch.manual_seed(1)
    out = augment_images(images, policy)
    assert out.dtype == torch.uint8 and out.shape == (16, 3, 24, 24)
    # identical inputs, independent draws: not all views equal (16 draws of one op set would be)
    assert len({bytes(v.numpy().tobytes()) for v in out}) > 1
    torch.manual_seed(1)
    assert torch.equal(augment_images(images, policy), out)


def test_augment_images_checks_its_input():
    policy = create_augmentation("augmix")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        augment_images(torch.rand(3, 8, 8), policy)
    assert augment_images(torch.rand(0, 3, 8, 8), policy).shape == (0, 3, 8, 8)
