"""Shared constants and helpers of the kernel tests."""

from __future__ import annotations

import pytest
import torch

from mad_distill.ops._utils import interpreter_enabled, triton_available

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
HAS_TRITON = triton_available()

#: the kernels run on CUDA or, on a CPU, through the interpreter. tests/ops/conftest.py collects
#: this folder only then; run directly in another setting, the tests are skipped with the reason
#: (tests/ops/test_kernels_interpreted.py fails if anything here is skipped)
requires_triton = pytest.mark.skipif(
    not HAS_TRITON or not (CUDA or interpreter_enabled()),
    reason="the Triton kernels need triton and CUDA, or TRITON_INTERPRET=1 set before triton "
    "is imported",
)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: (rtol, atol as a fraction of the largest reference value) of Triton vs reference on the same
#: inputs. Both accumulate in fp32 from identical input values, so the loss agrees to fp32
#: rounding; gradients are rounded once to the input dtype (1-2 ulps of fp16 / bf16 apart).
#: the loss also gets an absolute floor (:func:`kl_loss_tol`): a KL near 0 is a difference of
#: terms of the logits' size, which fp32 resolves to about 1e-7 of that size in either
#: implementation (a one-class row's KL is exactly 0 in the reference, 3e-6 on an H200 with
#: logits ~9 and tau 3.7: the compiler's fused multiply-adds round differently)
LOSS_TOL = (1e-4, 1e-5, 1e-6)
GRAD_TOL = {
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 8e-3),
}


def assert_close(
    got: torch.Tensor, ref: torch.Tensor, rtol: float, atol_frac: float, atol_min: float = 0.0
) -> None:
    """``|got - ref| <= max(atol_frac * max|ref|, atol_min) + rtol * |ref|`` elementwise."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert got.shape == ref.shape
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    atol = max(atol_frac * scale, atol_min) + 1e-12
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


def kl_loss_tol(*logits: torch.Tensor, tau: float) -> tuple[float, float, float]:
    """:data:`LOSS_TOL` with the absolute floor raised to fp32 rounding of the KL's terms:
    each is ``|z| / tau`` and the loss scales them by ``tau**2``, so ``~eps * max|z| * tau``."""
    zmax = max((float(z.detach().abs().max()) for z in logits if z.numel()), default=0.0)
    rtol, atol_frac, atol_min = LOSS_TOL
    return rtol, atol_frac, max(atol_min, 8 * torch.finfo(torch.float32).eps * zmax * tau)


def random_index(g: torch.Generator, b: int, n: int, k: int, p_none: float = 0.3) -> torch.Tensor:
    """``[b, k]`` distinct positions per row, ``-1`` at random slots, some rows all ``-1``."""
    index = torch.full((b, k), -1, dtype=torch.long)
    for r in range(b):
        perm = torch.randperm(n, generator=g)[:k]
        keep = torch.rand(k, generator=g) >= p_none
        index[r] = torch.where(keep, perm, torch.full_like(perm, -1))
    if b > 1 and k > 0:
        index[int(torch.randint(0, b, (1,), generator=g))] = -1  # an all-masked row
    return index
