"""Augmented views of images: the policies by name, one draw per image, seeded."""

from __future__ import annotations

import pytest
import torch

from mad_distill.data.augment import AUGMENTATIONS, augment_images, create_augmentation


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


def test_an_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'; known: "):
        create_augmentation("mixup")
