"""Augmented views of training images, for distilling on more than the images themselves.

A teacher that labels each augmented view itself ("function matching", Beyer et al., *Knowledge
distillation: A good teacher is patient and consistent*, CVPR 2022) can use augmentations that
change the answer (a solarised red is no longer red), which a hard label cannot follow. The
world runner's per-method ``augment`` option applies one of these torchvision policies to the
unlabelled (and optionally the labelled) rows of each training batch; the teachers see the same
augmented pixels as the student.

:data:`AUGMENTATIONS` is the one place that turns a name into a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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

#: the ``augment`` method option's fields and defaults
AUGMENT_DEFAULTS: dict[str, Any] = {"kind": None, "labeled": False, "unlabeled": True}


def create_augmentation(kind: str) -> Callable[[Tensor], Tensor]:
    """The policy named ``kind`` (a key of :data:`AUGMENTATIONS`)."""
    if kind not in AUGMENTATIONS:
        known = sorted(AUGMENTATIONS)
        raise ValueError(f"augment.kind: unknown augmentation {kind!r}; known: {known}")
    return AUGMENTATIONS[kind]()


def check_augment(value: Mapping[str, Any] | None, unlabeled: float) -> dict[str, Any] | None:
    """The ``augment`` method option completed with :data:`AUGMENT_DEFAULTS` and checked
    (``None``: off). ``unlabeled`` is the method's unlabelled pool fraction (0: none)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(
            "augment must be a mapping such as {kind: augmix, unlabeled: true}, got "
            f"{type(value).__name__}"
        )
    unknown = sorted(set(value) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ValueError(f"augment: unknown field(s) {unknown}; known: {sorted(AUGMENT_DEFAULTS)}")
    out = {**AUGMENT_DEFAULTS, **dict(value)}
    if out["kind"] is None:
        raise ValueError(f"augment.kind is required; known: {sorted(AUGMENTATIONS)}")
    create_augmentation(out["kind"])
    for name in ("labeled", "unlabeled"):
        if not isinstance(out[name], bool):
            raise ValueError(f"augment.{name} must be true or false, got {out[name]!r}")
    if not (out["labeled"] or out["unlabeled"]):
        raise ValueError("augment: neither labeled nor unlabeled rows are augmented")
    if out["unlabeled"] and not unlabeled and not out["labeled"]:
        raise ValueError(
            "augment.unlabeled is set but the method has no unlabelled inputs (unlabeled: 0); "
            "set unlabeled > 0 or augment.labeled: true"
        )
    return out


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
