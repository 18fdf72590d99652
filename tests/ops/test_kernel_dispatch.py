"""Backend choice of the public ops, in this (compiled-mode, usually CPU-only) session.

``auto`` runs the reference off CUDA; an explicit ``triton`` that cannot run raises instead of
silently running something else; ``select_tokens`` and ``feature_loss`` have no Triton path.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from mad_distill import ops
from mad_distill._dispatch import call_op
from mad_distill.ops import _utils

# the module, not the function of the same name that mad_distill.ops re-exports
token_kl_module = importlib.import_module("mad_distill.ops.token_kl")

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU dispatch")


def _kl_args(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 4, 6, generator=g).requires_grad_(True)
    t = torch.randn(2, 4, 6, generator=g)
    return s, t, torch.tensor([[0, 3], [1, -1]]), torch.tensor([0.5, 2.0])


def _fl_args(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 4, 3, generator=g).requires_grad_(True)
    w, b = torch.randn(6, 3, generator=g), torch.randn(6, generator=g)
    return (
        h,
        w,
        b,
        torch.randn(2, 4, 6, generator=g),
        torch.tensor([[0, 3], [1, -1]]),
        torch.ones(2),
    )


@pytest.fixture
def no_kernels(monkeypatch):
    """Any Triton path taken fails loudly."""

    def boom(*a, **k):
        raise AssertionError("the Triton path was taken")

    monkeypatch.setattr(token_kl_module, "_token_kl_triton", boom)
    monkeypatch.setattr(token_kl_module, "_fused_linear_token_kl_triton", boom)


@NO_CUDA
def test_auto_on_cpu_is_the_reference(no_kernels):
    s, t, i, w = _kl_args()
    got = ops.token_kl(s, t, i, w, 2.0)
    assert torch.equal(got, ops.token_kl_reference(s, t, i, w, 2.0))
    got.backward()  # a normal autograd graph
    h, wt, b, te, i, w = _fl_args()
    got = ops.fused_linear_token_kl(h, wt, b, te, i, w, 2.0)
    assert torch.equal(got, ops.fused_linear_token_kl_reference(h, wt, b, te, i, w, 2.0))


def test_reference_backend_is_forced(no_kernels):
    s, t, i, w = _kl_args()
    assert torch.equal(
        ops.token_kl(s, t, i, w, 1.5, backend="reference"), ops.token_kl_reference(s, t, i, w, 1.5)
    )
    assert torch.equal(
        call_op("token_kl", s, t, i, w, 1.5, backend="reference"),
        ops.token_kl_reference(s, t, i, w, 1.5),
    )


@NO_CUDA
def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    # this session imported triton in compiled mode: even setting the variable now cannot switch
    # triton.language to the interpreter, and the dispatch must say so rather than crash later
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if _utils.interpreter_enabled():
        pytest.skip("this session runs under the interpreter (tests/ops/kernels covers it)")
    s, t, i, w = _kl_args()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ops.token_kl(s, t, i, w, backend="triton")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        call_op("token_kl", s, t, i, w, backend="triton")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ops.fused_linear_token_kl(*_fl_args(), backend="triton")


def test_triton_missing(monkeypatch, no_kernels):
    monkeypatch.setattr(_utils, "triton_available", lambda: False)
    s, t, i, w = _kl_args()
    with pytest.raises(ValueError, match="triton is not installed"):
        ops.token_kl(s, t, i, w, backend="triton")
    with pytest.raises(ValueError, match="triton is not installed"):
        ops.fused_linear_token_kl(*_fl_args(), backend="triton")
    # auto never needs it
    assert torch.equal(ops.token_kl(s, t, i, w), ops.token_kl_reference(s, t, i, w))


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.token_kl(*_kl_args(), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.fused_linear_token_kl(*_fl_args(), backend="fused")


def test_select_and_feature_loss_have_no_triton_path():
    """Both stay eager by design (see their modules): no ``backend`` switch, so forcing
    ``triton`` through the core's dispatcher raises instead of running the reference."""
    for name in ("select_tokens", "feature_loss"):
        assert "backend" not in inspect.signature(getattr(ops, name)).parameters
    scores, mask = torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="no Triton path"):
        call_op("select_tokens", scores, mask, 2, None, backend="triton")
    idx, valid = ops.select_tokens(scores, mask, 2)
    ref_idx, ref_valid = ops.select_tokens_reference(scores, mask, 2)
    assert torch.equal(idx, ref_idx) and torch.equal(valid, ref_valid)
    s, t = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    assert torch.equal(
        ops.feature_loss(s, t, idx, torch.ones(2)),
        ops.feature_loss_reference(s, t, idx, torch.ones(2)),
    )
