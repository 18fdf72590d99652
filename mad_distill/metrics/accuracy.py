"""Accuracy overall and per class (SNLI-VE: entailment, neutral, contradiction)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

#: SNLI-VE class order used by :mod:`mad_distill.data.snli_ve` (label index = position)
SNLI_VE_CLASSES: tuple[str, ...] = ("entailment", "neutral", "contradiction")


def _as_indices(preds: Tensor, num_classes: int, name: str) -> Tensor:
    """``[B]`` class indices from ``[B]`` indices or ``[B, C]`` scores."""
    if preds.dim() == 2:
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"{name} preds have {preds.shape[1]} scores per row, expected {num_classes}"
            )
        return preds.argmax(-1)
    if preds.dim() != 1:
        raise ValueError(f"{name} preds must be [B] or [B, C], got {tuple(preds.shape)}")
    if preds.is_floating_point():
        raise TypeError(f"{name} [B] preds must be integer class indices, got {preds.dtype}")
    return preds


def _class_accuracy_update(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """Per true class: ``(correct [C], total [C])``."""
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must match")
    keep = torch.ones_like(target, dtype=torch.bool)
    if ignore_index is not None:
        keep = target != ignore_index
    t, p = target[keep].long(), preds[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise ValueError(f"target class {bad} outside [0, {num_classes})")
    total = torch.bincount(t, minlength=num_classes).to(torch.float64)
    correct = torch.bincount(t[p == t], minlength=num_classes).to(torch.float64)
    return correct, total


def _class_accuracy_compute(
    correct: Tensor, total: Tensor, names: Sequence[str]
) -> dict[str, Tensor]:
    """``{"acc": micro accuracy, "acc_<class>": recall of that class}``; NaN where empty."""
    nan = torch.tensor(math.nan, dtype=torch.float64, device=correct.device)
    n = total.sum()
    out = {"acc": correct.sum() / n if n > 0 else nan}
    for i, name in enumerate(names):
        key = "acc_" + re.sub(r"\W+", "_", name).strip("_")
        out[key] = correct[i] / total[i] if total[i] > 0 else nan
    return out


class ClassAccuracy(Metric):
    """Accuracy over all examples plus the accuracy within each true class (DDP: sums only).

    Args:
        num_classes: number of classes ``C``.
        class_names: names for the per-class keys (default ``"0"``, ``"1"``, ...).
        ignore_index: target value to skip (e.g. -1 for unlabelled examples), optional.

    ``update(preds, target)`` takes ``[B]`` indices or ``[B, C]`` scores and ``[B]`` targets;
    ``compute()`` returns ``{"acc", "acc_<class>", ...}`` in [0, 1].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} names but num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = tuple(names)
        self.ignore_index = ignore_index
        z = torch.zeros(num_classes, dtype=torch.float64)
        self.add_state("correct", default=z.clone(), dist_reduce_fx="sum")
        self.add_state("total", default=z.clone(), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        idx = _as_indices(preds, self.num_classes, type(self).__name__)
        c, t = _class_accuracy_update(idx, target, self.num_classes, self.ignore_index)
        self.correct += c.to(self.correct.device)
        self.total += t.to(self.total.device)

    def compute(self) -> dict[str, Tensor]:
        return _class_accuracy_compute(self.correct, self.total, self.class_names)


class SNLIVEAccuracy(ClassAccuracy):
    """SNLI-VE accuracy: overall and per class (entailment, neutral, contradiction)."""

    def __init__(self, ignore_index: int | None = -1, **kwargs) -> None:
        super().__init__(3, SNLI_VE_CLASSES, ignore_index=ignore_index, **kwargs)
