"""The fused ``token_kl`` Triton kernels against ``token_kl_reference``.

On a CPU-only machine they run through Triton's interpreter (see conftest.py), so shapes are
small; the tile width is forced small (``block``) so the multi-tile online-softmax loops run.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_helpers import (
    DEVICE,
    DTYPES,
    GRAD_TOL,
    assert_close,
    kl_loss_tol,
    random_index,
    requires_triton,
)

from mad_distill.ops import token_kl, token_kl_reference
from mad_distill.ops.token_kl import _token_kl_triton

# the module (``mad_distill.ops.token_kl`` as an attribute is the re-exported function)
module = importlib.import_module("mad_distill.ops.token_kl")

pytestmark = requires_triton

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _logits(g, shape, dtype, layout, scale=3.0):
    """``[B, N, C]`` logits with unit stride along C in one of three layouts."""
    b, n, c = shape
    if layout == "contiguous":
        x = torch.randn(b, n, c, generator=g)
    elif layout == "transposed":  # [N, B, C] storage viewed as [B, N, C]
        x = torch.randn(n, b, c, generator=g).transpose(0, 1)
    else:  # "padded": rows of a wider buffer, row stride > C
        x = torch.randn(b, n, c + 3, generator=g)[..., 1 : c + 1]
    assert x.stride(-1) == 1 or c == 1
    return (x * scale).to(dtype)


def _run(s, t, index, weights, tau, grad_output, fn):
    s = s.detach().to(DEVICE).requires_grad_(True)
    loss = fn(s, t.to(DEVICE), index.to(DEVICE), weights.to(DEVICE), tau)
    (loss * grad_output).backward()
    return loss.detach(), s.grad


def _check(s, t, index, weights, tau, grad_output=1.0, block=None):
    loss, grad = _run(
        s, t, index, weights, tau, grad_output,
        lambda *a: _token_kl_triton(*a, block=block),
    )  # fmt: skip
    ref_loss, ref_grad = _run(s, t, index, weights, tau, grad_output, token_kl_reference)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert grad.dtype == s.dtype and grad.shape == s.shape
    assert_close(loss, ref_loss, *kl_loss_tol(s, t, tau=tau))
    assert_close(grad, ref_grad, *GRAD_TOL[s.dtype])
    # the gradient exists only on the selected rows
    sel = torch.zeros(s.shape[:2], dtype=torch.bool)
    for b, row in enumerate(index.tolist()):
        for j in row:
            if j >= 0:
                sel[b, j] = True
    assert not grad.cpu()[~sel].any()
    return loss, grad


@SETTINGS
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 6),
    c=st.sampled_from([1, 2, 7, 16, 33, 100]),
    dtype=st.sampled_from(DTYPES),
    tau=st.sampled_from([0.5, 1.0, 2.0, 3.7]),
    layout=st.sampled_from(["contiguous", "transposed", "padded"]),
    block=st.sampled_from([None, 4, 16]),
    grad_output=st.sampled_from([1.0, -0.3, 2.5]),
    int32=st.booleans(),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(b, n, c, dtype, tau, layout, block, grad_output, int32, data, seed):
    g = torch.Generator().manual_seed(seed)
    s = _logits(g, (b, n, c), dtype, layout)
    t = _logits(g, (b, n, c), dtype, data.draw(st.sampled_from(["contiguous", "padded"])))
    k = data.draw(st.integers(0, n))
    index = random_index(g, b, n, k)
    if int32:
        index = index.int()
    weights = torch.rand(b, generator=g) * 2
    weights[torch.rand(b, generator=g) < 0.3] = 0.0  # zero weights
    _check(s, t, index, weights, tau, grad_output, block)


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_widths_and_masks(dtype):
    g = torch.Generator().manual_seed(1)
    for c in (1, 7):
        s, t = _logits(g, (3, 4, c), dtype, "contiguous"), _logits(g, (3, 4, c), dtype, "padded")
        index = torch.tensor([[3, 0, -1], [-1, -1, -1], [1, 2, 0]])
        _check(s, t, index, torch.tensor([1.0, 2.0, 0.0]), 2.0, grad_output=0.7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocabulary_width(dtype):
    """C = 50265 (RoBERTa's vocabulary) with the default tile width, one selected row."""
    g = torch.Generator().manual_seed(2)
    s, t = (
        _logits(g, (1, 2, 50265), dtype, "contiguous"),
        _logits(g, (1, 2, 50265), dtype, "padded"),
    )
    _check(s, t, torch.tensor([[1]]), torch.tensor([1.5]), 2.0, grad_output=1.3)


def test_one_class_rows_large_tau():
    """One class: the KL is exactly 0 in the reference and fp32 rounding of logit-sized terms
    in the kernel (3e-6 on an H200, hypothesis seed 969); within kl_loss_tol, gradient 0."""
    g = torch.Generator().manual_seed(969)
    s, t = (
        _logits(g, (1, 4, 1), torch.float32, "contiguous"),
        _logits(g, (1, 4, 1), torch.float32, "contiguous"),
    )
    index = random_index(g, 1, 4, 1)
    for tau in (0.5, 3.7):
        loss, grad = _check(s, t, index, torch.ones(1) * 1.7, tau, grad_output=2.5)
        assert float(grad.abs().max()) < 1e-5


def test_nothing_selected_gives_zero_loss_and_zero_grad():
    g = torch.Generator().manual_seed(3)
    s, t = (
        _logits(g, (2, 3, 5), torch.float32, "contiguous"),
        _logits(g, (2, 3, 5), torch.float32, "contiguous"),
    )
    for index in (torch.empty(2, 0, dtype=torch.long), torch.full((2, 2), -1)):
        loss, grad = _check(s, t, index, torch.ones(2), 1.0)
        assert float(loss) == 0.0 and not grad.any()
    # zero weights everywhere: same
    loss, grad = _check(s, t, torch.tensor([[0, 2], [1, -1]]), torch.zeros(2), 1.0)
    assert float(loss) == 0.0 and not grad.any()


def test_identical_logits_give_zero():
    g = torch.Generator().manual_seed(4)
    s = _logits(g, (2, 3, 11), torch.float32, "contiguous").to(DEVICE).requires_grad_(True)
    index = torch.tensor([[0, 2], [1, -1]], device=DEVICE)
    loss = _token_kl_triton(s, s.detach().clone(), index, torch.ones(2, device=DEVICE), 2.0)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-6 and float(s.grad.abs().max()) < 1e-6


def test_gradients_reach_the_student_only():
    g = torch.Generator().manual_seed(5)
    s = _logits(g, (2, 3, 6), torch.float32, "contiguous").to(DEVICE).requires_grad_(True)
    t = _logits(g, (2, 3, 6), torch.float32, "contiguous").to(DEVICE).requires_grad_(True)
    w = torch.ones(2, device=DEVICE, requires_grad=True)
    loss = _token_kl_triton(s, t, torch.tensor([[0, 1], [2, -1]], device=DEVICE), w, 1.5)
    loss.backward()
    assert s.grad is not None and t.grad is None and w.grad is None


def test_repeated_positions_count_twice_as_in_the_reference():
    g = torch.Generator().manual_seed(10)
    s = _logits(g, (2, 4, 9), torch.float32, "contiguous")
    t = _logits(g, (2, 4, 9), torch.float32, "contiguous")
    _check(s, t, torch.tensor([[1, 1, 3], [2, -1, 2]]), torch.tensor([0.5, 1.5]), 2.0, 0.8)


def test_index_scanned_in_several_chunks(monkeypatch):
    """The epilogue and the backward scan ``index[b]`` in chunks of KBLOCK entries: with a
    16-entry chunk, 37 slots (repeats, -1s, positions in every chunk) take three."""
    monkeypatch.setattr(module, "_kblock_for", lambda k: 16)
    g = torch.Generator().manual_seed(12)
    s = _logits(g, (3, 29, 11), torch.float32, "contiguous")
    t = _logits(g, (3, 29, 11), torch.float32, "contiguous")
    index = torch.randint(-1, 29, (3, 37), generator=g)
    index[1, 30:] = index[1, 0]  # the same position in the first and the last chunk
    index[2] = -1  # nothing selected in one row
    _check(s, t, index, torch.tensor([0.5, 1.5, 2.0]), 1.7, 0.6)


def test_epilogue_flags_positions_past_n_and_weights_rows():
    """What the device-side bound check reads: ok = 0 iff a position is >= N; coef_b =
    w_b / (B * |S_b|) counting only positions in [0, N)."""
    index = torch.tensor([[0, 2, 5], [1, -1, -1]], device=DEVICE)
    w = torch.tensor([3.0, 1.0], device=DEVICE)
    kl = torch.tensor([1.0, 2.0, 4.0, 8.0, 0.0, 0.0], device=DEVICE)
    for n, want_ok in ((6, 1), (5, 0)):
        coef = torch.empty(2, device=DEVICE)
        loss = torch.empty((), device=DEVICE)
        ok = torch.empty((), dtype=torch.int32, device=DEVICE)
        module._token_kl_finish[(1,)](
            kl, index, w, coef, loss, ok, index.stride(0), index.stride(1), w.stride(0),
            2, 3, n, 4.0, KBLOCK=16,
        )  # fmt: skip
        count0 = 3 if n == 6 else 2
        torch.testing.assert_close(coef.cpu(), torch.tensor([3.0 / (2 * count0), 1.0 / 2]))
        want = 4.0 * (3.0 / (2 * count0) * 7.0 + 0.5 * 8.0)
        torch.testing.assert_close(loss.cpu(), torch.tensor(want))
        assert int(ok) == want_ok


def test_mixed_input_dtypes():
    """bf16 student with an fp32 teacher (e.g. a cached teacher): both are upcast."""
    g = torch.Generator().manual_seed(6)
    s = _logits(g, (2, 4, 9), torch.bfloat16, "contiguous")
    t = _logits(g, (2, 4, 9), torch.float32, "contiguous")
    _check(s, t, torch.tensor([[0, 3], [1, -1]]), torch.tensor([0.5, 1.5]), 2.0)


def test_not_row_contiguous_is_copied():
    g = torch.Generator().manual_seed(7)
    s = _logits(g, (2, 7, 3), torch.float32, "contiguous").transpose(1, 2)  # [2, 3, 7], C stride 7
    t = _logits(g, (2, 3, 7), torch.float32, "contiguous")
    assert s.stride(-1) != 1
    _check(s, t, torch.tensor([[0, 2], [1, -1]]), torch.ones(2), 1.0)


def test_public_dispatch_triton_equals_internal():
    g = torch.Generator().manual_seed(8)
    s = _logits(g, (2, 3, 8), torch.float32, "contiguous").to(DEVICE)
    t = _logits(g, (2, 3, 8), torch.float32, "contiguous").to(DEVICE)
    index, w = torch.tensor([[0, 2], [1, -1]], device=DEVICE), torch.ones(2, device=DEVICE)
    a = token_kl(s, t, index, w, 2.0, backend="triton")
    b = _token_kl_triton(s, t, index, w, 2.0)
    assert torch.equal(a, b)


def _bad_case():
    g = torch.Generator().manual_seed(9)
    return dict(
        student_logits=_logits(g, (2, 3, 5), torch.float32, "contiguous"),
        teacher_logits=_logits(g, (2, 3, 5), torch.float32, "contiguous"),
        index=torch.tensor([[0, 2], [1, -1]]),
        weights=torch.ones(2),
        tau=1.0,
    )


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda a: a.update(teacher_logits=a["teacher_logits"][:, :2]), ValueError, "must equal"),
        (lambda a: a.update(student_logits=a["student_logits"][0]), ValueError, r"\[B, N, C\]"),
        (lambda a: a.update(index=a["index"][:1]), ValueError, "index must be"),
        (lambda a: a.update(index=a["index"].float()), TypeError, "index must be int"),
        (lambda a: a.update(weights=torch.ones(3)), ValueError, "weights must be"),
        (lambda a: a.update(index=torch.tensor([[0, 3], [1, -1]])), ValueError, "position >= N"),
        (lambda a: a.update(tau=float("nan")), ValueError, "tau"),
        (lambda a: a.update(tau=float("inf")), ValueError, "tau"),
        (lambda a: a.update(tau=0.0), ValueError, "tau"),
        (lambda a: a.update(tau=True), ValueError, "tau"),
        (lambda a: a.update(student_logits=a["student_logits"].double()), TypeError, "float32"),
        (lambda a: a.update(teacher_logits=a["teacher_logits"].long()), TypeError, "floating"),
    ],
)
def test_bad_inputs_raise_before_launch(mutate, error, match, monkeypatch):
    from mad_distill.ops import _utils

    def no_launch(self, grid):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(_utils.LazyKernel, "__getitem__", no_launch)
    # on CUDA the bound check is a device-side assert unless eager checks are asked for
    monkeypatch.setenv(_utils.SYNC_CHECKS_ENV, "1")
    args = _bad_case()
    mutate(args)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(error, match=match):
        _token_kl_triton(**args)
    with pytest.raises(error, match=match):
        token_kl(**args, backend="triton")
