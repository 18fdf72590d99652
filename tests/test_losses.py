"""Feature and KL distillation losses: values, gradients, dtypes, masks, dispatch, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mad_distill import _dispatch, ops
from mad_distill.losses import feature_distill_loss, instance_kl_loss, token_kl_loss
from mad_distill.selection import select_tokens

SETTINGS = settings(max_examples=20, deadline=None)


def _index(seed, b, n, ratio=0.5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, n, generator=g) < 0.7
    mask[-1] = False
    index, _ = select_tokens(torch.randn(b, n, generator=g), mask, ratio=ratio)
    return index


def _loop_feature(s, t, index, w, loss):
    total = 0.0
    for b in range(s.shape[0]):
        rows = [j for j in index[b].tolist() if j >= 0]
        vals = []
        for j in rows:
            u = s[b, j].double() / s[b, j].double().norm()
            v = t[b, j].double() / t[b, j].double().norm()
            if loss == "cosine":
                vals.append(1 - float(u @ v))
            elif loss == "mse":
                vals.append(float(((u - v) ** 2).mean()))
            else:
                d = (u - v).abs()
                vals.append(float(torch.where(d < 1, 0.5 * d * d, d - 0.5).mean()))
        if vals:
            total += float(w[b]) * sum(vals) / len(vals)
    return total / s.shape[0]


def _loop_kl(s, t, index, w, tau):
    total = 0.0
    for b in range(s.shape[0]):
        vals = []
        for j in (j for j in index[b].tolist() if j >= 0):
            lp_s = torch.log_softmax(s[b, j].double() / tau, -1)
            lp_t = torch.log_softmax(t[b, j].double() / tau, -1)
            vals.append(float((lp_t.exp() * (lp_t - lp_s)).sum()))
        if vals:
            total += float(w[b]) * tau * tau * sum(vals) / len(vals)
    return total / s.shape[0]


@SETTINGS
@given(
    b=st.integers(1, 4),
    n=st.integers(1, 9),
    d=st.integers(1, 7),
    loss=st.sampled_from(["cosine", "mse", "smooth_l1"]),
    seed=st.integers(0, 9999),
)
def test_feature_loss_matches_loop(b, n, d, loss, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, n, d, generator=g), torch.randn(b, n, d, generator=g)
    w = torch.rand(b, generator=g)
    index = _index(seed, b, n)
    got = feature_distill_loss(s, t, index, w, loss, backend="reference")
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(_loop_feature(s, t, index, w, loss), abs=1e-5)


@SETTINGS
@given(
    b=st.integers(1, 4),
    n=st.integers(1, 9),
    c=st.integers(1, 11),
    tau=st.sampled_from([0.5, 1.0, 2.0, 3.7]),
    seed=st.integers(0, 9999),
)
def test_token_kl_matches_loop(b, n, c, tau, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, n, c, generator=g) * 2, torch.randn(b, n, c, generator=g) * 2
    w = torch.rand(b, generator=g)
    index = _index(seed, b, n, ratio=0.4)
    got = token_kl_loss(s, t, index, w, tau)
    assert float(got) == pytest.approx(_loop_kl(s, t, index, w, tau), abs=1e-5)


def test_instance_kl_is_pooled_token_kl():
    g = torch.Generator().manual_seed(3)
    s, t, w = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.rand(5)
    expected = _loop_kl(s[:, None], t[:, None], torch.zeros(5, 1, dtype=torch.long), w, 2.0)
    assert float(instance_kl_loss(s, t, w, 2.0)) == pytest.approx(expected, abs=1e-6)
    assert float(instance_kl_loss(t, t, w, 2.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        instance_kl_loss(s, t[:, :3], w, 2.0)


# The losses compute in fp32 by contract (also for float64 inputs), so gradcheck runs on float64
# inputs with a step and tolerance that fp32 rounding (~1e-7 / eps) cannot reach; a wrong
# gradient is off by O(1) and still fails.
_GC = dict(eps=1e-3, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("loss", ["cosine", "mse", "smooth_l1"])
def test_feature_loss_gradcheck(loss):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    index = torch.tensor([[2, 0, -1], [-1, -1, -1]])
    w = torch.tensor([0.7, 1.3], dtype=torch.float64)
    fn = lambda x: feature_distill_loss(x, t, index, w, loss).double()
    assert torch.autograd.gradcheck(fn, (s,), **_GC)


def test_token_kl_gradcheck():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    index = torch.tensor([[1, 2], [0, -1]])
    w = torch.tensor([1.0, 0.5], dtype=torch.float64)
    fn = lambda x: token_kl_loss(x, t, index, w, 1.7).double()
    assert torch.autograd.gradcheck(fn, (s,), **_GC)
    fn_inst = lambda x: instance_kl_loss(x[:, 0], t[:, 0], w, 0.8).double()
    assert torch.autograd.gradcheck(fn_inst, (s,), **_GC)


def test_gradients_reach_only_selected_student_rows():
    s = torch.randn(2, 4, 6, requires_grad=True)
    t = torch.randn(2, 4, 6, requires_grad=True)
    index = torch.tensor([[3, -1], [-1, -1]])
    w = torch.ones(2, requires_grad=True)
    (token_kl_loss(s, t, index, w, 2.0) + feature_distill_loss(s, t, index, w)).backward()
    assert t.grad is None and w.grad is None
    grad_rows = s.grad.abs().sum(-1) > 0
    assert grad_rows.tolist() == [[False, False, False, True], [False, False, False, False]]


def test_nothing_selected_gives_zero_loss_and_zero_grad():
    s = torch.randn(3, 4, 5, requires_grad=True)
    index = torch.full((3, 2), -1)
    loss = token_kl_loss(s, torch.randn(3, 4, 5), index, torch.ones(3), 2.0)
    loss = loss + feature_distill_loss(s, torch.randn(3, 4, 5), index, torch.ones(3))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(s.grad, torch.zeros_like(s))
    empty = torch.zeros(3, 0, dtype=torch.long)
    assert float(feature_distill_loss(s, s, empty, torch.ones(3)).detach()) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_computed_in_fp32(dtype):
    g = torch.Generator().manual_seed(2)
    s32, t32 = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    s, t = s32.to(dtype), t32.to(dtype)
    index, w = torch.tensor([[0, 4], [2, -1]]), torch.tensor([1.0, 2.0])
    kl = token_kl_loss(s, t, index, w, 2.0)
    feat = feature_distill_loss(s, t, index, w)
    assert kl.dtype == torch.float32 and feat.dtype == torch.float32
    # same as the fp32 loss of the rounded inputs: no half-precision arithmetic inside
    assert float(kl) == pytest.approx(float(token_kl_loss(s.float(), t.float(), index, w, 2.0)))
    assert float(feat) == pytest.approx(float(feature_distill_loss(s.float(), t.float(), index, w)))
    s.requires_grad_(True)
    token_kl_loss(s, t, index, w, 2.0).backward()
    assert s.grad.dtype == dtype and torch.isfinite(s.grad.float()).all()


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda s, i, w: feature_distill_loss(s, s, i, w, "l1"), ValueError, "loss must be one of"),
        (
            lambda s, i, w: feature_distill_loss(s, s[:, :2], i, w),
            ValueError,
            "student and teacher",
        ),
        (
            lambda s, i, w: feature_distill_loss(s, s, i[:1], w),
            ValueError,
            r"index must be \[B, k\]",
        ),
        (lambda s, i, w: feature_distill_loss(s, s, i.float(), w), TypeError, "index must be int"),
        (
            lambda s, i, w: feature_distill_loss(s, s, i + 4, w),
            ValueError,
            r"positions in \[0, N\)",
        ),
        (
            lambda s, i, w: feature_distill_loss(s, s, i - 2, w),
            ValueError,
            r"positions in \[0, N\)",
        ),
        (
            lambda s, i, w: feature_distill_loss(s, s, i, w[:1]),
            ValueError,
            r"weights must be \[B\]",
        ),
        (lambda s, i, w: token_kl_loss(s, s, i, w, 0.0), ValueError, "tau"),
        (lambda s, i, w: token_kl_loss(s, s, i, w, float("nan")), ValueError, "tau"),
        (lambda s, i, w: token_kl_loss(s, s[..., :2], i, w, 1.0), ValueError, "teacher_logits"),
        (lambda s, i, w: token_kl_loss(s, s, i, w, 1.0, backend="gpu"), ValueError, "backend"),
    ],
)
def test_bad_inputs(call, exc, match):
    s, index, w = torch.randn(2, 4, 3), torch.tensor([[0, 1], [2, -1]]), torch.ones(2)
    with pytest.raises(exc, match=match):
        call(s, index, w)


# ------------------------------------------------------------------------------- dispatch
def test_auto_backend_on_cpu_is_reference():
    assert _dispatch.resolve_backend("auto", torch.zeros(1)) == "reference"
    assert _dispatch.resolve_backend("triton", torch.zeros(1)) == "triton"
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.resolve_backend("cuda")


def test_reference_backend_calls_the_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(ops, "token_kl_reference", lambda *a: calls.append(a) or torch.tensor(0.0))
    s, idx = torch.randn(1, 2, 3), torch.zeros(1, 1, dtype=torch.long)
    token_kl_loss(s, s, idx, torch.ones(1), 1.0, backend="reference")
    assert len(calls) == 1


def test_triton_backend_passes_the_switch_or_refuses(monkeypatch):
    s, idx, w = torch.randn(1, 2, 3), torch.zeros(1, 1, dtype=torch.long), torch.ones(1)
    seen = {}

    def with_switch(*args, backend="auto"):
        seen["backend"] = backend
        return torch.tensor(1.5)

    monkeypatch.setattr(ops, "token_kl", with_switch)
    assert float(token_kl_loss(s, s, idx, w, 1.0, backend="triton")) == 1.5
    assert seen["backend"] == "triton"
    # an op without a Triton path must not silently run the reference when triton is forced
    monkeypatch.setattr(ops, "token_kl", lambda *args: torch.tensor(0.0))
    with pytest.raises(ValueError, match="no Triton path"):
        token_kl_loss(s, s, idx, w, 1.0, backend="triton")


def test_selected_loss_decreases_under_optimisation():
    # end to end on the reference path: selection -> loss -> optimiser step
    torch.manual_seed(0)
    b, n, d = 4, 6, 5
    teacher = torch.randn(b, n, d)
    student = torch.randn(b, n, d, requires_grad=True)
    index, _ = select_tokens(torch.randn(b, n), torch.ones(b, n, dtype=torch.bool), ratio=0.5)
    opt = torch.optim.Adam([student], lr=0.1)
    first = None
    for _ in range(30):
        loss = feature_distill_loss(student, teacher, index, torch.ones(b))
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = float(loss.detach())
    assert final < 0.5 * first and math.isfinite(final)
