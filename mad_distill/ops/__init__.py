"""Kernels of the MAD core (DESIGN.md section 4). Each module holds a PyTorch reference
(``*_reference``, the ground truth) and, where it pays, a Triton kernel with its autograd
Function; the public names dispatch: ``token_kl`` and ``fused_linear_token_kl`` take
``backend="auto" | "triton" | "reference"`` (auto = Triton on CUDA when triton imports);
``select_tokens`` and ``feature_loss`` are eager on every device (see their modules for why)."""

from mad_distill.ops.feature_loss import feature_loss, feature_loss_reference
from mad_distill.ops.select_tokens import select_tokens, select_tokens_reference
from mad_distill.ops.token_kl import (
    fused_linear_token_kl,
    fused_linear_token_kl_reference,
    token_kl,
    token_kl_reference,
)

__all__ = [
    "feature_loss",
    "feature_loss_reference",
    "fused_linear_token_kl",
    "fused_linear_token_kl_reference",
    "select_tokens",
    "select_tokens_reference",
    "token_kl",
    "token_kl_reference",
]
