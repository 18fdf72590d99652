"""``fused_linear_token_kl`` (chunked head + Triton kernels) against its reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_helpers import DEVICE, DTYPES, assert_close, kl_loss_tol, random_index, requires_triton

from mad_distill.ops import fused_linear_token_kl, fused_linear_token_kl_reference
from mad_distill.ops.token_kl import _fused_linear_token_kl_triton

pytestmark = requires_triton

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: (rtol, atol as a fraction of the largest reference value). The chunked path rounds each
#: chunk's ``grad_logits @ W`` product to the input dtype before adding it (in fp32) to the
#: hidden gradient, where eager rounds one full product once: a few more ulps in fp16 / bf16.
FL_GRAD_TOL = {
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def _case(g, b, n, d, c, dtype, bias, teacher_layout="contiguous"):
    hidden = torch.randn(b, n, d, generator=g).to(dtype)
    weight = (torch.randn(c, d, generator=g) / max(d, 1) ** 0.5 * 2).to(dtype)
    b_ = (torch.randn(c, generator=g) * 0.5).to(dtype) if bias else None
    if teacher_layout == "contiguous":
        teacher = torch.randn(b, n, c, generator=g) * 2
    else:
        teacher = (torch.randn(n, b, c, generator=g) * 2).transpose(0, 1)
    return hidden, weight, b_, teacher.to(dtype)


def _run(fn, hidden, weight, bias, teacher, index, weights, tau, grad_output, **kw):
    params = [hidden, weight] + ([bias] if bias is not None else [])
    leaves = [p.detach().to(DEVICE).requires_grad_(True) for p in params]
    h, w = leaves[0], leaves[1]
    bb = leaves[2] if bias is not None else None
    dev = lambda x: x.to(DEVICE)
    loss = fn(h, w, bb, dev(teacher), dev(index), dev(weights), tau, **kw)
    (loss * grad_output).backward()
    return loss.detach(), [x.grad for x in leaves]


def _check(hidden, weight, bias, teacher, index, weights, tau, grad_output, chunk, block=None):
    loss, grads = _run(
        _fused_linear_token_kl_triton, hidden, weight, bias, teacher, index, weights, tau,
        grad_output, chunk_size=chunk, block=block,
    )  # fmt: skip
    ref_loss, ref_grads = _run(
        fused_linear_token_kl_reference, hidden, weight, bias, teacher, index, weights, tau,
        grad_output,
    )  # fmt: skip
    dtype = hidden.dtype
    rtol, atol = FL_GRAD_TOL[dtype]
    assert loss.dtype == torch.float32
    # same logits values, fp32 arithmetic: all dtypes
    logits = hidden.float() @ weight.float().T + (0 if bias is None else bias.float())
    assert_close(loss, ref_loss, *kl_loss_tol(logits, teacher, tau=tau))
    for got, ref in zip(grads, ref_grads):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert_close(got, ref, rtol, atol)
    return loss, grads


@SETTINGS
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 5),
    d=st.sampled_from([1, 3, 8]),
    c=st.sampled_from([1, 7, 20, 33]),
    dtype=st.sampled_from(DTYPES),
    bias=st.booleans(),
    chunk=st.sampled_from([None, 1, 5, 16]),
    block=st.sampled_from([None, 4]),
    tau=st.sampled_from([0.5, 1.0, 2.0]),
    grad_output=st.sampled_from([1.0, -0.4, 3.0]),
    teacher_layout=st.sampled_from(["contiguous", "transposed"]),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(
    b, n, d, c, dtype, bias, chunk, block, tau, grad_output, teacher_layout, data, seed
):
    g = torch.Generator().manual_seed(seed)
    hidden, weight, bias_t, teacher = _case(g, b, n, d, c, dtype, bias, teacher_layout)
    k = data.draw(st.integers(0, n))
    index = random_index(g, b, n, k)
    weights = torch.rand(b, generator=g) * 2
    weights[torch.rand(b, generator=g) < 0.3] = 0.0
    _check(hidden, weight, bias_t, teacher, index, weights, tau, grad_output, chunk, block)


def test_vocabulary_width_chunked():
    """RoBERTa-sized head (C = 50265) in default-sized chunks, two selected rows."""
    g = torch.Generator().manual_seed(11)
    hidden, weight, bias, teacher = _case(g, 1, 3, 4, 50265, torch.float32, True)
    index = torch.tensor([[2, 0]])
    _check(hidden, weight, bias, teacher, index, torch.tensor([0.7]), 2.0, 1.5, None)


def test_student_logits_never_exist_whole(monkeypatch):
    """Every matmul the Triton path makes is one ``[B*k, chunk]`` slice of the logits."""
    g = torch.Generator().manual_seed(12)
    hidden, weight, bias, teacher = _case(g, 2, 6, 5, 37, torch.float32, True)
    index = torch.tensor([[5, 1, -1], [0, 2, 3]])
    shapes = []
    real_linear = F.linear

    def recording_linear(x, w, b=None):
        out = real_linear(x, w, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(F, "linear", recording_linear)
    h = hidden.to(DEVICE).requires_grad_(True)
    loss = _fused_linear_token_kl_triton(
        h, weight.to(DEVICE), bias.to(DEVICE), teacher.to(DEVICE), index.to(DEVICE),
        torch.ones(2, device=DEVICE), 1.0, chunk_size=8,
    )  # fmt: skip
    loss.backward()
    assert shapes, "the fused path computes its logits with F.linear"
    assert all(s == (6, min(8, 37 - 8 * i)) for i, s in enumerate(shapes[:5]))
    assert max(s[1] for s in shapes) == 8 and len(shapes) == 2 * 5  # 5 chunks, fwd + bwd


def test_frozen_head_and_no_bias():
    g = torch.Generator().manual_seed(13)
    hidden, weight, _, teacher = _case(g, 2, 4, 3, 9, torch.float32, False)
    index = torch.tensor([[3, 0], [1, -1]])
    h = hidden.to(DEVICE).requires_grad_(True)
    w = weight.to(DEVICE)  # frozen head: no gradient wanted
    loss = _fused_linear_token_kl_triton(
        h, w, None, teacher.to(DEVICE), index.to(DEVICE), torch.ones(2, device=DEVICE), 2.0,
        chunk_size=4,
    )  # fmt: skip
    loss.backward()
    h_ref = hidden.to(DEVICE).requires_grad_(True)
    fused_linear_token_kl_reference(
        h_ref, w, None, teacher.to(DEVICE), index.to(DEVICE), torch.ones(2, device=DEVICE), 2.0
    ).backward()
    assert w.grad is None
    assert_close(h.grad, h_ref.grad, 1e-4, 1e-5)
    # unselected tokens get no gradient
    assert not h.grad[1, 0].any() and not h.grad[0, 1].any()


def test_repeated_positions_count_twice_as_in_the_reference():
    g = torch.Generator().manual_seed(17)
    hidden, weight, bias, teacher = _case(g, 2, 4, 3, 9, torch.float32, True)
    index = torch.tensor([[1, 1, 3], [2, -1, 2]])
    _check(hidden, weight, bias, teacher, index, torch.tensor([0.5, 1.5]), 2.0, 0.8, 4)


def test_nothing_selected():
    g = torch.Generator().manual_seed(14)
    hidden, weight, bias, teacher = _case(g, 2, 3, 4, 6, torch.float32, True)
    for index in (torch.empty(2, 0, dtype=torch.long), torch.full((2, 2), -1)):
        loss, grads = _check(hidden, weight, bias, teacher, index, torch.ones(2), 1.0, 1.0, 4)
        assert float(loss) == 0.0 and not any(gr.any() for gr in grads)


def test_public_dispatch():
    g = torch.Generator().manual_seed(15)
    hidden, weight, bias, teacher = _case(g, 2, 3, 4, 6, torch.float32, True)
    args = [x.to(DEVICE) for x in (hidden, weight, bias, teacher)]
    index, w = torch.tensor([[0, 2], [1, -1]], device=DEVICE), torch.ones(2, device=DEVICE)
    a = fused_linear_token_kl(*args, index, w, 2.0, backend="triton", chunk_size=4)
    b = _fused_linear_token_kl_triton(*args, index, w, 2.0, chunk_size=4)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda a: a.update(weight=a["weight"][:, :-1]), ValueError, "agree on d"),
        (lambda a: a.update(bias=a["bias"][:-1]), ValueError, "bias must be"),
        (lambda a: a.update(teacher_logits=a["teacher_logits"][:, :, :-1]), ValueError, "teacher"),
        (lambda a: a.update(weight=a["weight"].half()), TypeError, "weight dtype"),
        (lambda a: a.update(hidden=a["hidden"].double()), TypeError, "float32, float16"),
        (lambda a: a.update(index=a["index"] + 10), ValueError, "position >= N"),
        (lambda a: a.update(index=a["index"].float()), TypeError, "index must be int"),
        (lambda a: a.update(tau=float("inf")), ValueError, "tau"),
        (lambda a: a.update(chunk_size=0), ValueError, "chunk_size"),
    ],
)
def test_bad_inputs_raise_before_launch(mutate, error, match, monkeypatch):
    from mad_distill.ops import _utils

    def no_launch(self, grid):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(_utils.LazyKernel, "__getitem__", no_launch)
    g = torch.Generator().manual_seed(16)
    hidden, weight, bias, teacher = _case(g, 2, 3, 4, 6, torch.float32, True)
    args = dict(
        hidden=hidden, weight=weight, bias=bias, teacher_logits=teacher,
        index=torch.tensor([[0, 2], [1, -1]]), weights=torch.ones(2), tau=1.0, chunk_size=None,
    )  # fmt: skip
    mutate(args)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    # on CUDA the bound check is a device-side assert unless eager checks are asked for
    monkeypatch.setenv(_utils.SYNC_CHECKS_ENV, "1")
    with pytest.raises(error, match=match):
        _fused_linear_token_kl_triton(**args)
