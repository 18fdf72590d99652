"""The bench's ``augment`` method option: train on augmented views of the training images.

The world runner applies one of :mod:`mad_distill.data.augment`'s torchvision policies to the
unlabelled (and optionally the labelled) rows of each training batch; the teachers see the same
augmented pixels as the student ("function matching", Beyer et al., CVPR 2022).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mad_distill.data.augment import AUGMENTATIONS, create_augmentation

#: the ``augment`` method option's fields and defaults
AUGMENT_DEFAULTS: dict[str, Any] = {"kind": None, "labeled": False, "unlabeled": True}


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
    try:
        create_augmentation(out["kind"])
    except ValueError as err:
        raise ValueError(f"augment.kind: {err}") from None
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
