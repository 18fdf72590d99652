"""Token-selective, instance-weighted KL(teacher || student) with temperature.

``L = (1/B) * sum_b w_b * mean_{i in S_b} tau^2 * KL(softmax(t_bi / tau) || softmax(s_bi / tau))``

Rows with no selected token contribute 0. ``token_kl_reference`` is the ground truth the Triton
kernels are tested against (DESIGN.md section 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_token_kl_inputs(
    student_logits: Tensor, teacher_logits: Tensor, index: Tensor, weights: Tensor, tau: float
) -> None:
    if student_logits.dim() != 3:
        raise ValueError(
            f"student_logits must be [B, N, C], got shape {tuple(student_logits.shape)}"
        )
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} must equal student_logits shape "
            f"{tuple(student_logits.shape)}"
        )
    b, n, _ = student_logits.shape
    if index.dim() != 2 or index.shape[0] != b:
        raise ValueError(f"index must be [B, k] with B = {b}, got shape {tuple(index.shape)}")
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be int32 or int64, got {index.dtype}")
    if tuple(weights.shape) != (b,):
        raise ValueError(f"weights must be [B] = ({b},), got shape {tuple(weights.shape)}")
    if not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
        raise TypeError("student_logits and teacher_logits must be floating point")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def token_kl_reference(
    student_logits: Tensor,
    teacher_logits: Tensor,
    index: Tensor,
    weights: Tensor,
    tau: float = 1.0,
) -> Tensor:
    """Eager reference.

    Args:
        student_logits: ``[B, N, C]`` (gradients flow here).
        teacher_logits: ``[B, N, C]`` (treated as constant).
        index: ``[B, k]`` selected token positions, -1 for none.
        weights: ``[B]`` instance weights (treated as constant).
        tau: softmax temperature, > 0.

    Returns:
        Scalar fp32 loss.
    """
    _check_token_kl_inputs(student_logits, teacher_logits, index, weights, tau)
    b, n, c = student_logits.shape
    if index.numel() and int(index.max()) >= n:
        raise ValueError(f"index has a position >= N = {n}")
    valid = index >= 0
    safe = index.clamp(min=0).long()
    gather = safe.unsqueeze(-1).expand(-1, -1, c)
    s = torch.gather(student_logits, 1, gather).float() / tau
    t = torch.gather(teacher_logits.detach(), 1, gather).float() / tau
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # [B, k]
    kl = kl * valid
    count = valid.sum(1).clamp(min=1)
    per_instance = kl.sum(1) / count
    return (tau * tau) * (weights.detach().float() * per_instance).sum() / b


def fused_linear_token_kl_reference(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher_logits: Tensor,
    index: Tensor,
    weights: Tensor,
    tau: float = 1.0,
) -> Tensor:
    """Reference for the fused-linear variant: student logits are ``hidden @ weight.T + bias``.

    Args:
        hidden: ``[B, N, d]``; weight: ``[C, d]``; bias: ``[C]`` or None;
        teacher_logits: ``[B, N, C]``; index ``[B, k]``; weights ``[B]``.
    """
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden [B, N, d] and weight [C, d] must agree on d, got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    logits = F.linear(hidden, weight, bias)
    return token_kl_reference(logits, teacher_logits, index, weights, tau)


token_kl = token_kl_reference
fused_linear_token_kl = fused_linear_token_kl_reference
