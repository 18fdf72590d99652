"""Kernels of the MAD core. Each module holds a PyTorch reference, and (on CUDA) a Triton kernel
with its autograd Function; the public names dispatch between them."""

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
