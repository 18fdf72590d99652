"""MAD distillation losses over selected tokens, weighted per instance (DESIGN.md section 1).

- :func:`feature_distill_loss`:
  ``L_feat = (1/B) sum_b w_b mean_{i in S_b} l(P(h_bi), t_bi)`` on L2-normalised features;
- :func:`token_kl_loss`:
  ``L_kl = (1/B) sum_b w_b mean_{i in S_b} tau^2 KL(softmax(z_t/tau) || softmax(z_s/tau))``;
- :func:`instance_kl_loss`: the same KL with ``S_b`` = the one pooled token (teacher zero-shot
  logits vs student task logits).

Each dispatches to :mod:`mad_distill.ops` (Triton on CUDA, PyTorch reference elsewhere) through
:func:`mad_distill._dispatch.call_op`. Losses are fp32 scalars whatever the input dtype; rows with
no selected token contribute 0; gradients reach the student only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mad_distill._dispatch import call_op
from mad_distill.config import FEATURE_LOSSES
from mad_distill.ops._utils import require


def _check_index_weights(index: Tensor, weights: Tensor, b: int, n: int) -> None:
    if not isinstance(index, Tensor) or index.dim() != 2 or index.shape[0] != b:
        shape = tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__
        raise ValueError(f"index must be [B, k] with B = {b}, got {shape}")
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be int32 or int64, got {index.dtype}")
    if not isinstance(weights, Tensor) or tuple(weights.shape) != (b,):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be [B] = ({b},), got {shape}")
    if index.numel():
        require(
            (index >= -1) & (index < n),
            f"index must hold positions in [0, N) = [0, {n}) or -1 for none",
        )


def feature_distill_loss(
    student: Tensor,
    teacher: Tensor,
    index: Tensor,
    weights: Tensor,
    loss: str = "cosine",
    backend: str = "auto",
) -> Tensor:
    """Feature loss on selected tokens.

    Args:
        student: ``[B, N, D]`` projected student tokens (gradients flow here).
        teacher: ``[B, N, D]`` teacher targets aligned to the student tokens (constant).
        index: ``[B, k]`` selected positions from :func:`mad_distill.selection.select_tokens`,
            -1 for none.
        weights: ``[B]`` instance weights (constant).
        loss: ``cosine`` | ``mse`` | ``smooth_l1``.
        backend: ``auto`` | ``triton`` | ``reference``.

    Returns:
        Scalar fp32.
    """
    if loss not in FEATURE_LOSSES:
        raise ValueError(f"loss must be one of {FEATURE_LOSSES}, got {loss!r}")
    if student.dim() != 3 or tuple(teacher.shape) != tuple(student.shape):
        raise ValueError(
            f"student and teacher must both be [B, N, D] of one shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    _check_index_weights(index, weights, student.shape[0], student.shape[1])
    out = call_op(
        "feature_loss", student, teacher.detach(), index, weights.detach(), loss, backend=backend
    )
    return out.float()


def token_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    index: Tensor,
    weights: Tensor,
    tau: float,
    backend: str = "auto",
) -> Tensor:
    """Token-level KL(teacher || student) at temperature ``tau``, scaled by ``tau^2``.

    Args:
        student_logits: ``[B, N, C]`` (gradients flow here).
        teacher_logits: ``[B, N, C]`` (constant).
        index: ``[B, k]`` selected positions, -1 for none.
        weights: ``[B]`` instance weights (constant).
        tau: temperature, > 0.
        backend: ``auto`` | ``triton`` | ``reference``.

    Returns:
        Scalar fp32.
    """
    if student_logits.dim() != 3 or tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            f"student_logits and teacher_logits must both be [B, N, C] of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    _check_index_weights(index, weights, student_logits.shape[0], student_logits.shape[1])
    out = call_op(
        "token_kl",
        student_logits,
        teacher_logits.detach(),
        index,
        weights.detach(),
        tau,
        backend=backend,
    )
    return out.float()


def instance_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    weights: Tensor,
    tau: float,
    backend: str = "auto",
) -> Tensor:
    """Instance-level KL: the token KL of the one pooled token per instance.

    Args:
        student_logits: ``[B, C]`` student task logits.
        teacher_logits: ``[B, C]`` teacher zero-shot logits over the same ``C`` candidates.
        weights: ``[B]`` instance weights.
        tau: temperature, > 0.

    Returns:
        Scalar fp32 ``(1/B) sum_b w_b tau^2 KL(softmax(t_b/tau) || softmax(s_b/tau))``.
    """
    if student_logits.dim() != 2 or tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            f"student_logits and teacher_logits must both be [B, C] of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    b = student_logits.shape[0]
    index = torch.zeros(b, 1, dtype=torch.long, device=student_logits.device)
    return token_kl_loss(
        student_logits.unsqueeze(1), teacher_logits.unsqueeze(1), index, weights, tau, backend
    )
