"""Augmented views of images: torchvision's augmentation policies by name.

Used for "function matching" (Beyer et al., *Knowledge distillation: A good teacher is patient
and consistent*, CVPR 2022): a teacher that labels each augmented view itself can use
augmentations that change the answer (a solarised red is no longer red), which a hard label
cannot follow. The bench's per-method ``augment`` option (:mod:`mad_distill.bench.augment`)
trains on such views; :func:`~mad_distill.data.world.zero_shot.augmented_views` scores the
teacher on them.

:data:`AUGMENTATIONS` is the one place that turns a name into a policy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms import v2

#: augmentation name -> torchvision policy factory (defaults of torchvision)
AUGMENTATIONS: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {
    # Hendrycks et al., ICLR 2020: mixes chains of ops with the original, made for robustness
    # to distribution shift
    "augmix": v2.AugMix,
    "randaugment": v2.RandAugment,
    "trivialaugment": v2.TrivialAugmentWide,
}


def create_augmentation(kind: str) -> Callable[[Tensor], Tensor]:
    """The policy named ``kind`` (a key of :data:`AUGMENTATIONS`)."""
    if kind not in AUGMENTATIONS:
        known = sorted(AUGMENTATIONS)
        raise ValueError(f"unknown augmentation {kind!r}; known: {known}")
    return AUGMENTATIONS[kind]()


def to_uint8(images: Tensor) -> Tensor:
    """Pixels in ``[0, 1]`` as ``uint8`` (exact for images that were ``uint8 / 255``)."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def augment_images(images: Tensor, policy: Callable[[Tensor], Tensor]) -> Tensor:
    """Each image of ``[B, 3, H, W]`` pixels in ``[0, 1]`` through ``policy`` on its own
    (torchvision draws one set of ops per call), as ``uint8 [B, 3, H, W]``. Randomness comes
    from torch's global generator, so a seeded run is reproducible."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    u8 = to_uint8(images)
    return torch.stack([policy(im) for im in u8]) if len(u8) else u8
