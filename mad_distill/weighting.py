"""Confidence weighting (CW): per-instance weights from the teacher's zero-shot probabilities.

MAD weights its distillation objective dynamically per instance (arXiv 2204.10496, abstract);
the formulas are our design (DESIGN.md section 1). With ``p_t = softmax(teacher_logits)``:

- ``gt_prob`` (default): ``w_b = p_t(y_b) ** gamma`` -- distil most where the teacher is right
  and sure;
- ``entropy``: ``w_b = (1 - H(p_t) / log C) ** gamma`` -- no labels needed (``C = 1``: ``w = 1``);
- ``correct``: ``w_b = 1[argmax p_t = y_b]``;
- ``uniform``: ``w_b = 1`` (ablation baseline);
- ``gain``: ``w_b = max(p_t(y_b) - p_s(y_b), 0) ** gamma`` with the student's detached
  probability ``p_s`` of the true class -- distil where the teacher still knows better than the
  student. These weights are **not** normalised: their batch mean is how much the teacher has
  left to teach, so distillation fades where the student has overtaken the teacher (e.g. with
  many labels) instead of being rescaled back to mean 1.

Instances whose label is ``ignore_index`` (default -1: e.g. a VQA question none of whose answers
is in the answer vocabulary) get weight 0 under the label modes: the teacher's correctness cannot
be judged there, so they are not distilled.

Weights (all but ``gain``) are detached and normalised to mean 1 over the batch by
:func:`normalize_weights` (globally across processes when given an ``all_reduce``). If every
weight is zero, the normalised weights are all zero (the batch is not distilled), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mad_distill.config import WEIGHT_MODES
from mad_distill.ops._utils import require

#: the weight modes that read the labels
LABEL_MODES = ("gt_prob", "correct", "gain")


def normalize_weights(
    weights: Tensor, all_reduce: Callable[[Tensor], Tensor | None] | None = None
) -> Tensor:
    """Scale ``weights [B]`` to mean 1; all-zero weights stay zero.

    Args:
        weights: ``[B]`` non-negative weights.
        all_reduce: optional callable that sums a tensor across processes; it gets the fp32
            tensor ``[sum of weights, count]`` and either returns the summed tensor or sums in
            place and returns ``None`` (so ``torch.distributed.all_reduce`` works as is). With it
            the mean is the global batch mean.

    Returns:
        ``[B]`` fp32, detached. No host sync.
    """
    if weights.dim() != 1:
        raise ValueError(f"weights must be [B], got shape {tuple(weights.shape)}")
    w = weights.detach().float()
    # the count is filled on the device: a tensor built from a host number would be a copy
    stats = torch.stack([w.sum(), w.new_full((), float(w.numel()))])
    if all_reduce is not None:
        reduced = all_reduce(stats)
        if reduced is not None:
            stats = reduced
    total, count = stats[0], stats[1]
    scale = torch.where(total > 0, count / total.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
    return w * scale


def _softmax_checked(logits: Tensor, probs: bool, name: str = "teacher_logits") -> Tensor:
    """Detached fp32 probabilities ``[B, C]`` from logits (or checked probabilities)."""
    if logits.dim() != 2:
        raise ValueError(f"{name} must be [B, C], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class (C >= 1)")
    t = logits.detach().float()
    if probs:
        ok = torch.isfinite(t).all() & (t >= 0).all() & ((t.sum(1) - 1).abs() <= 1e-3).all()
        require(ok, "teacher probabilities (probs=True) must be finite, >= 0 and sum to 1 per row")
        return t
    require(torch.isfinite(t), f"{name} has NaN or inf values")
    return torch.softmax(t, dim=-1)


def _known(labels: Tensor, ignore_index: int | None) -> Tensor:
    if ignore_index is None:
        return torch.ones_like(labels, dtype=torch.bool)
    return labels != ignore_index


def _check_labels(
    labels: Tensor | None, mode: str, b: int, c: int, ignore_index: int | None = -1
) -> Tensor | None:
    if mode not in LABEL_MODES:
        return None
    if labels is None:
        raise ValueError(f"labels are required for weight mode {mode!r} (MADBatch.labels)")
    if tuple(labels.shape) != (b,):
        raise ValueError(f"labels must be [B] = ({b},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    labels = labels.long()
    known = _known(labels, ignore_index)
    if b:
        require(
            ~known | ((labels >= 0) & (labels < c)),
            f"labels must be class indices in [0, C) = [0, {c}) or ignore_index={ignore_index}",
            detail=lambda: f", got min {int(labels.min())}, max {int(labels.max())}",
        )
    return labels


def _student_probs(student_logits: Tensor | None, b: int, c: int) -> Tensor:
    if student_logits is None:
        raise ValueError(
            "weight mode 'gain' needs the student's task logits (StudentTokens.logits)"
        )
    if tuple(student_logits.shape) != (b, c):
        raise ValueError(
            f"student logits must be [B, C] = ({b}, {c}) like the teacher's zero-shot logits, got "
            f"shape {tuple(student_logits.shape)}"
        )
    return _softmax_checked(student_logits, probs=False, name="student logits")


def raw_confidence(
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    mode: str = "gt_prob",
    gamma: float = 1.0,
    *,
    probs: bool = False,
    ignore_index: int | None = -1,
    student_logits: Tensor | None = None,
) -> Tensor:
    """Un-normalised confidence ``[B]`` in ``[0, 1]`` (see module doc); detached, fp32.

    ``student_logits [B, C]`` (the student's task logits) are required for ``gain``.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma!r}")
    p = _softmax_checked(teacher_logits, probs)
    b, c = p.shape
    y = _check_labels(labels, mode, b, c, ignore_index)
    if mode == "uniform":
        return torch.ones(b, device=p.device)
    if mode in LABEL_MODES:
        known = _known(y, ignore_index)
        y_safe = y.clamp(min=0)
        if mode == "gt_prob":
            w = p.gather(1, y_safe.unsqueeze(1)).squeeze(1).pow(gamma)
        elif mode == "gain":
            p_s = _student_probs(student_logits, b, c).to(p.device)
            gap = p.gather(1, y_safe.unsqueeze(1)) - p_s.gather(1, y_safe.unsqueeze(1))
            w = gap.squeeze(1).clamp(min=0.0).pow(gamma)
        else:
            w = (p.argmax(dim=1) == y_safe).float()
        return w * known
    if c == 1:
        return torch.ones(b, device=p.device)
    entropy = -(p * p.clamp(min=1e-30).log()).sum(1)
    return (1.0 - entropy / math.log(c)).clamp(0.0, 1.0).pow(gamma)


def confidence_weights(
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    mode: str = "gt_prob",
    gamma: float = 1.0,
    *,
    probs: bool = False,
    all_reduce: Callable[[Tensor], Tensor | None] | None = None,
    ignore_index: int | None = -1,
    student_logits: Tensor | None = None,
) -> Tensor:
    """Instance weights ``[B]`` from the teacher's zero-shot scores, normalised to batch mean 1
    (``gain``: absolute, see the module doc).

    Args:
        teacher_logits: ``[B, C]`` zero-shot logits (CLIP: with its logit scale), or
            probabilities when ``probs=True``.
        labels: ``[B]`` ground-truth class indices; required for ``gt_prob`` and ``correct``.
        mode: one of :data:`mad_distill.config.WEIGHT_MODES`.
        gamma: exponent for ``gt_prob`` / ``entropy`` / ``gain``, ``>= 0``.
        all_reduce: makes the normalising mean global, see :func:`normalize_weights`.
        ignore_index: label value meaning "unknown"; such instances get weight 0.
        student_logits: ``[B, C]`` the student's task logits (``gain`` only).

    Returns:
        ``[B]`` fp32, detached; all zeros if every raw weight is zero.
    """
    raw = raw_confidence(
        teacher_logits,
        labels,
        mode,
        gamma,
        probs=probs,
        ignore_index=ignore_index,
        student_logits=student_logits,
    )
    if mode == "gain":
        return raw
    return normalize_weights(raw, all_reduce=all_reduce)
