"""Token-selective, instance-weighted KL(teacher || student) with temperature.

``L = (1/B) * sum_b w_b * mean_{i in S_b} tau^2 * KL(softmax(t_bi / tau) || softmax(s_bi / tau))``

Rows with no selected token contribute 0. ``token_kl_reference`` is the ground truth the Triton
kernels are tested against (DESIGN.md section 4).

Fused path (``backend="triton"``, the default on CUDA), three launches forward, one backward:

* forward: one program per selected slot makes one pass over the student and teacher row with an
  online (max, sum-exp) softmax for both, giving the row's KL and the two log-sum-exps (8 bytes
  each are all that is saved). No gathered copies, no softmax tensors. A one-program epilogue
  counts ``|S_b|``, weights and reduces (deterministically) to the loss; a device-side assert
  reports positions ``>= N`` (no host sync).
* backward: one pass over every row of ``[B, N, C]``: each program finds its row in the index
  (a scan of ``index[b]``, which sits in L2), selected rows read the logits once more and write
  ``grad_output * tau * w_b / (B * |S_b|) * (softmax(s/tau) - softmax(t/tau))``; the other rows
  write zeros, so the gradient is written exactly once (no separate memset). ``grad_output`` is
  read on the device.

Few launches matter as much as few bytes: at ``B*N = 8192`` the whole op moves about a gigabyte,
a fraction of a millisecond on an H100/H200, while each extra PyTorch launch costs tens of
microseconds of host time (the first version's 35 small launches made it host-bound: see
``benchmarks/results/kernels-*.json``). Measured and rejected (H200, bf16, C = 50265): keeping the
online-softmax state per lane and reducing across lanes once after the loop made the forward
slower (0.41 vs 0.25 ms; more exponentials and registers), and a zero-store-only branch for the
unselected rows in the backward changed nothing measurable.

The gradient is computed in the backward, not in the forward as Liger-Kernel's terminal losses
do: MAD always scales this loss by ``lambda_kl(t)``, so ``grad_output != 1`` and a gradient made
in the forward would need a second read-modify-write of the selected rows; and it would hold the
``[B, N, C]`` gradient from the forward to the backward. Forward + backward therefore read the
selected rows twice and write the gradient once; the floor (read once, write once) would need
the whole row on chip, which ``C = 50265`` does not fit.

``fused_linear_token_kl`` does the same with the student's head fused in, chunk by chunk over
``C``, so ``[B*k, C]`` student logits never exist (see :class:`FusedLinearTokenKLFunction`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mad_distill.ops._utils import (
    LazyKernel,
    check_index,
    check_kernel_dtype,
    check_same_device,
    next_power_of_2,
    num_warps_for,
    resolve_backend,
    row_contiguous,
    sync_checks_enabled,
    triton_available,
)

if triton_available():
    import triton.language as tl
else:  # the kernels below are only JIT-compiled (and tl only looked up) when triton imports
    tl = None

#: widest tile (columns of C) a program streams at once
MAX_BLOCK = 4096


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
    if (
        isinstance(tau, bool)
        or not isinstance(tau, (int, float))
        or not math.isfinite(tau)
        or tau <= 0
    ):
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
    check_index("token_kl", index, n)
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


# --------------------------------------------------------------------------------------------
# Triton kernels (plain functions, JIT-compiled on first launch: see ops/_utils.LazyKernel).
# Only `tl` and the arguments are used inside, as Triton requires.


def _token_kl_fwd_kernel(
    S,  # [B, N, C] student logits, unit stride along C
    T,  # [B, N, C] teacher logits, unit stride along C
    IDX,  # [B, K] int32/int64 selected positions, < 0 = none
    KL,  # [B*K] fp32 out: KL(teacher || student) at temperature tau per slot (0 if none)
    LSE_S,  # [B*K] fp32 out: logsumexp(s / tau)
    LSE_T,  # [B*K] fp32 out: logsumexp(t / tau)
    s_sb,
    s_sn,
    t_sb,
    t_sn,
    i_sb,
    i_sk,
    K,
    N,
    C,
    inv_tau,
    BLOCK: tl.constexpr,
):
    slot = tl.program_id(0).to(tl.int64)
    b = slot // K
    j = slot % K
    pos = tl.load(IDX + b * i_sb + j * i_sk).to(tl.int64)
    # out-of-range positions are unselected here; check_index has reported them before launch
    sel = (pos >= 0) & (pos < N)
    pos = tl.where(sel, pos, 0)
    s_row = S + b * s_sb + pos * s_sn
    t_row = T + b * t_sb + pos * t_sn
    m_s = float("-inf")
    l_s = 0.0
    m_t = float("-inf")
    l_t = 0.0
    acc = 0.0  # sum_j exp(t_j - m_t) * (t_j - s_j), rescaled whenever m_t grows
    for c0 in range(0, C, BLOCK):
        offs = c0 + tl.arange(0, BLOCK)
        cmask = offs < C
        # an unselected slot reads nothing (masked loads) and sees finite zeros: no NaN appears
        ld = cmask & sel
        s = tl.load(s_row + offs, mask=ld, other=0.0).to(tl.float32) * inv_tau
        t = tl.load(t_row + offs, mask=ld, other=0.0).to(tl.float32) * inv_tau
        s_m = tl.where(cmask, s, float("-inf"))
        t_m = tl.where(cmask, t, float("-inf"))
        ms_new = tl.maximum(m_s, tl.max(s_m, axis=0))
        l_s = l_s * tl.exp(m_s - ms_new) + tl.sum(tl.exp(s_m - ms_new), axis=0)
        m_s = ms_new
        mt_new = tl.maximum(m_t, tl.max(t_m, axis=0))
        alpha = tl.exp(m_t - mt_new)
        e_t = tl.exp(t_m - mt_new)
        l_t = l_t * alpha + tl.sum(e_t, axis=0)
        acc = acc * alpha + tl.sum(e_t * (t - s), axis=0)
        m_t = mt_new
    log_l_s = tl.log(l_s)
    log_l_t = tl.log(l_t)
    lse_s = m_s + log_l_s
    lse_t = m_t + log_l_t
    # KL = sum_j p_t,j * ((t_j - lse_t) - (s_j - lse_s)); the large shifts cancel first
    kl = (acc / l_t - (m_t - m_s)) + (log_l_s - log_l_t)
    tl.store(KL + slot, tl.where(sel, kl, 0.0))
    tl.store(LSE_S + slot, lse_s)
    tl.store(LSE_T + slot, lse_t)


def _token_kl_finish_kernel(
    KL,  # [B*K] fp32: KL per slot (0 if unselected)
    IDX,
    W,  # [B] instance weights (any float dtype)
    COEF,  # [B] fp32 out: w_b / (B * |S_b|)
    LOSS,  # [] fp32 out
    OK,  # [] int32 out: 1 if no position >= N
    i_sb,
    i_sk,
    w_s,
    B,
    K,
    N,
    tau_sq,
    KBLOCK: tl.constexpr,
):
    # one program, fixed order: the loss is bit-identical from run to run (no atomics)
    total = 0.0
    bad = 0
    for b in range(0, B):
        kl_sum = 0.0
        count = 0
        for k0 in range(0, K, KBLOCK):
            offs = k0 + tl.arange(0, KBLOCK)
            kmask = offs < K
            pos = tl.load(IDX + b * i_sb + offs * i_sk, mask=kmask, other=-1)
            count += tl.sum(((pos >= 0) & (pos < N)).to(tl.int32), axis=0)
            bad += tl.sum((pos >= N).to(tl.int32), axis=0)
            kl_sum += tl.sum(tl.load(KL + b * K + offs, mask=kmask, other=0.0), axis=0)
        coef = tl.load(W + b * w_s).to(tl.float32) / (tl.maximum(count, 1).to(tl.float32) * B)
        tl.store(COEF + b, coef)
        total += coef * kl_sum
    tl.store(LOSS, total * tau_sq)
    tl.store(OK, (bad == 0).to(tl.int32))


def _token_kl_bwd_kernel(
    S,
    T,
    G,  # [B, N, C] out, contiguous, student dtype: the full gradient (zeros off the selection)
    IDX,  # [B, K] selected positions (as in the forward)
    LSE_S,
    LSE_T,
    COEF,  # [B] fp32: w_b / (B * |S_b|)
    GO,  # [] fp32: grad_output, read here so the host never waits for it
    s_sb,
    s_sn,
    t_sb,
    t_sn,
    i_sb,
    i_sk,
    N,
    C,
    K,
    tau,
    inv_tau,
    BLOCK: tl.constexpr,
    KBLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    n = row % N
    # which slots pick (b, n): the first one's lse values serve all (they are equal), and a
    # position selected twice counts twice, as in the reference
    first = K
    mult = 0
    for k0 in range(0, K, KBLOCK):
        offs = k0 + tl.arange(0, KBLOCK)
        pos = tl.load(IDX + b * i_sb + offs * i_sk, mask=offs < K, other=-1).to(tl.int64)
        hit = pos == n
        mult += tl.sum(hit.to(tl.int32), axis=0)
        first = tl.minimum(first, tl.min(tl.where(hit, offs, K), axis=0))
    sel = mult > 0
    slot = tl.where(sel, b * K + first, 0)
    lse_s = tl.load(LSE_S + slot, mask=sel, other=0.0)
    lse_t = tl.load(LSE_T + slot, mask=sel, other=0.0)
    coef = tl.load(GO).to(tl.float32) * tau * tl.load(COEF + b) * mult.to(tl.float32)
    s_row = S + b * s_sb + n * s_sn
    t_row = T + b * t_sb + n * t_sn
    g_row = G + row * C
    for c0 in range(0, C, BLOCK):
        offs = c0 + tl.arange(0, BLOCK)
        cmask = offs < C
        ld = cmask & sel
        s = tl.load(s_row + offs, mask=ld, other=0.0).to(tl.float32) * inv_tau
        t = tl.load(t_row + offs, mask=ld, other=0.0).to(tl.float32) * inv_tau
        g = coef * (tl.exp(s - lse_s) - tl.exp(t - lse_t))
        g = tl.where(ld, g, 0.0)
        tl.store(g_row + offs, g.to(G.dtype.element_ty), mask=cmask)


def _chunk_stats_kernel(
    Z,  # [R, CC] student logits of this C-chunk (selected rows), unit stride along C
    z_sr,
    T,  # [B, N, C] teacher logits, unit stride along C
    t_sb,
    t_sn,
    IDX,
    i_sb,
    i_sk,
    STATE,  # [5, R] fp32 in/out: running max_s, sumexp_s, max_t, sumexp_t, acc (as above)
    R,
    K,
    N,
    c0,
    CC,
    inv_tau,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    b = r // K
    j = r % K
    pos = tl.load(IDX + b * i_sb + j * i_sk).to(tl.int64)
    sel = (pos >= 0) & (pos < N)
    pos = tl.where(sel, pos, 0)
    z_row = Z + r * z_sr
    t_row = T + b * t_sb + pos * t_sn + c0
    m_s = tl.load(STATE + r)
    l_s = tl.load(STATE + R + r)
    m_t = tl.load(STATE + 2 * R + r)
    l_t = tl.load(STATE + 3 * R + r)
    acc = tl.load(STATE + 4 * R + r)
    for o in range(0, CC, BLOCK):
        offs = o + tl.arange(0, BLOCK)
        cmask = offs < CC
        s = tl.load(z_row + offs, mask=cmask, other=0.0).to(tl.float32) * inv_tau
        t = tl.load(t_row + offs, mask=cmask & sel, other=0.0).to(tl.float32) * inv_tau
        s_m = tl.where(cmask, s, float("-inf"))
        t_m = tl.where(cmask, t, float("-inf"))
        ms_new = tl.maximum(m_s, tl.max(s_m, axis=0))
        l_s = l_s * tl.exp(m_s - ms_new) + tl.sum(tl.exp(s_m - ms_new), axis=0)
        m_s = ms_new
        mt_new = tl.maximum(m_t, tl.max(t_m, axis=0))
        alpha = tl.exp(m_t - mt_new)
        e_t = tl.exp(t_m - mt_new)
        l_t = l_t * alpha + tl.sum(e_t, axis=0)
        acc = acc * alpha + tl.sum(e_t * (t - s), axis=0)
        m_t = mt_new
    tl.store(STATE + r, m_s)
    tl.store(STATE + R + r, l_s)
    tl.store(STATE + 2 * R + r, m_t)
    tl.store(STATE + 3 * R + r, l_t)
    tl.store(STATE + 4 * R + r, acc)


def _chunk_grad_kernel(
    Z,  # [R, CC] in: student logits of the chunk; out (in place): d loss / d logits
    z_sr,
    T,
    t_sb,
    t_sn,
    IDX,
    i_sb,
    i_sk,
    LSE_S,  # [R] fp32
    LSE_T,  # [R] fp32
    COEF,  # [R] fp32: grad_output * tau * w_b / (B * |S_b|), 0 for unselected slots
    K,
    N,
    c0,
    CC,
    inv_tau,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    b = r // K
    j = r % K
    pos = tl.load(IDX + b * i_sb + j * i_sk).to(tl.int64)
    sel = (pos >= 0) & (pos < N)
    pos = tl.where(sel, pos, 0)
    z_row = Z + r * z_sr
    t_row = T + b * t_sb + pos * t_sn + c0
    lse_s = tl.load(LSE_S + r)
    lse_t = tl.load(LSE_T + r)
    coef = tl.load(COEF + r)
    for o in range(0, CC, BLOCK):
        offs = o + tl.arange(0, BLOCK)
        cmask = offs < CC
        s = tl.load(z_row + offs, mask=cmask, other=0.0).to(tl.float32) * inv_tau
        t = tl.load(t_row + offs, mask=cmask & sel, other=0.0).to(tl.float32) * inv_tau
        g = coef * (tl.exp(s - lse_s) - tl.exp(t - lse_t))
        g = tl.where(cmask & sel, g, 0.0)
        tl.store(z_row + offs, g.to(Z.dtype.element_ty), mask=cmask)


_token_kl_fwd = LazyKernel(_token_kl_fwd_kernel)
_token_kl_finish = LazyKernel(_token_kl_finish_kernel)
_token_kl_bwd = LazyKernel(_token_kl_bwd_kernel)
_chunk_stats = LazyKernel(_chunk_stats_kernel)
_chunk_grad = LazyKernel(_chunk_grad_kernel)


# --------------------------------------------------------------------------------------------
# autograd Functions


def _block_for(width: int, block: int | None) -> int:
    if block is not None:  # tests force small tiles to run the multi-tile loops
        return next_power_of_2(block)
    # at least one warp wide: tiny tiles gain nothing and masked lanes are free
    return min(max(next_power_of_2(width), 32), MAX_BLOCK)


def _kblock_for(k: int) -> int:
    """Index entries scanned at once by the epilogue and the backward."""
    return min(max(next_power_of_2(k), 16), 1024)


def _instance_coef(index: Tensor, weights: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``valid [B, k]`` and ``coef [B] = w_b / (B * |S_b|)`` (fp32, no host sync)."""
    valid = (index >= 0) & (index < n)
    count = valid.sum(1).clamp(min=1).to(torch.float32)
    coef = weights.detach().to(torch.float32) / (count * index.shape[0])
    return valid, coef


class TokenKLFunction(torch.autograd.Function):
    """Fused ``token_kl``; gradients flow to ``student_logits`` only.

    Inputs are validated by :func:`token_kl`; call that, not this.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        student: Tensor,
        teacher: Tensor,
        index: Tensor,
        weights: Tensor,
        tau: float,
        block: int | None,
    ) -> Tensor:
        b, n, c = student.shape
        k = index.shape[1]
        dev = student.device
        kl = torch.empty(b * k, dtype=torch.float32, device=dev)
        lse_s = torch.empty_like(kl)
        lse_t = torch.empty_like(kl)
        blk = _block_for(c, block)
        if b * k > 0:
            if c > 0:
                _token_kl_fwd[(b * k,)](
                    student, teacher, index, kl, lse_s, lse_t,
                    student.stride(0), student.stride(1), teacher.stride(0), teacher.stride(1),
                    index.stride(0), index.stride(1),
                    k, n, c, 1.0 / tau,
                    BLOCK=blk, num_warps=num_warps_for(blk),
                )  # fmt: skip
            else:
                kl.zero_()
        coef = torch.empty(b, dtype=torch.float32, device=dev)
        loss = torch.empty((), dtype=torch.float32, device=dev)
        ok = torch.empty((), dtype=torch.int32, device=dev)
        _token_kl_finish[(1,)](
            kl, index, weights, coef, loss, ok,
            index.stride(0), index.stride(1), weights.stride(0),
            b, k, n, float(tau * tau),
            KBLOCK=_kblock_for(k),
        )  # fmt: skip
        if dev.type == "cuda":
            # _token_kl_triton checked the bounds on the host already unless this is CUDA
            # without MAD_DISTILL_SYNC_CHECKS: then the device reports them (no host sync)
            torch._assert_async(ok, f"token_kl: index has a position >= N = {n}")
        ctx.save_for_backward(student, teacher, index, lse_s, lse_t, coef)
        ctx.tau = tau
        ctx.block = blk
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor
    ) -> tuple[Tensor | None, ...]:
        student, teacher, index, lse_s, lse_t, coef = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        b, n, c = student.shape
        k = index.shape[1]
        grad = torch.empty((b, n, c), dtype=student.dtype, device=student.device)
        if grad.numel() == 0:
            return grad, None, None, None, None, None
        _token_kl_bwd[(b * n,)](
            student, teacher, grad, index, lse_s, lse_t, coef,
            grad_output.to(torch.float32),
            student.stride(0), student.stride(1), teacher.stride(0), teacher.stride(1),
            index.stride(0), index.stride(1),
            n, c, k, float(ctx.tau), 1.0 / ctx.tau,
            BLOCK=ctx.block, KBLOCK=_kblock_for(k), num_warps=num_warps_for(ctx.block),
        )  # fmt: skip
        return grad, None, None, None, None, None


def _default_chunk(c: int, d: int) -> int:
    """Columns of C per chunk: the ``[B*k, chunk]`` logits chunk is about 4x the ``[B*k, d]``
    hidden rows (Liger-Kernel sizes its chunks the same way), at least 1024 columns so the
    matmuls stay efficient."""
    return max(1, min(c, max(1024, 4 * d)))


class FusedLinearTokenKLFunction(torch.autograd.Function):
    """``token_kl(hidden @ weight.T + bias, teacher, ...)`` without ``[B*k, C]`` logits.

    Forward: gather the selected hidden rows (``[B*k, d]``), then for each chunk of ``C``
    compute the chunk's logits with a matmul and fold them, with the teacher's chunk read in
    place, into per-row online softmax state (max and sum-exp of both, and the KL accumulator).
    Backward: recompute each chunk's logits, turn them into ``d loss / d logits`` in place with
    the saved log-sum-exps, and accumulate the gradients of the hidden rows, ``weight`` (each chunk
    owns its rows of it) and ``bias``. Peak extra memory: one ``[B*k, chunk]`` chunk plus the
    gradients themselves.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        teacher: Tensor,
        index: Tensor,
        weights: Tensor,
        tau: float,
        chunk: int,
        block: int | None,
    ) -> Tensor:
        b, n, d = hidden.shape
        c = weight.shape[0]
        k = index.shape[1]
        r = b * k
        valid, coef = _instance_coef(index, weights, n)
        pos = torch.where(valid, index, torch.zeros_like(index)).long()
        rows = torch.arange(b, device=hidden.device).unsqueeze(1)
        h_sel = hidden[rows, pos].reshape(r, d).contiguous()  # [B*k, d]: small
        state = torch.zeros((5, r), dtype=torch.float32, device=hidden.device)
        state[0].fill_(float("-inf"))
        state[2].fill_(float("-inf"))
        blk = _block_for(min(chunk, c), block)
        if r > 0 and c > 0:
            for c0 in range(0, c, chunk):
                c1 = min(c, c0 + chunk)
                z = F.linear(h_sel, weight[c0:c1], None if bias is None else bias[c0:c1])
                _chunk_stats[(r,)](
                    z, z.stride(0), teacher, teacher.stride(0), teacher.stride(1),
                    index, index.stride(0), index.stride(1), state,
                    r, k, n, c0, c1 - c0, 1.0 / tau,
                    BLOCK=blk, num_warps=num_warps_for(blk),
                )  # fmt: skip
            m_s, log_l_s, m_t, log_l_t = state[0], state[1].log(), state[2], state[3].log()
            lse_s, lse_t = m_s + log_l_s, m_t + log_l_t
            kl = (state[4] / state[3] - (m_t - m_s)) + (log_l_s - log_l_t)  # as in the kernel
            kl = torch.where(valid.view(-1), kl, 0.0)
            loss = (tau * tau) * (coef * kl.view(b, k).sum(1)).sum()
        else:
            lse_s = lse_t = state[0]
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        ctx.save_for_backward(h_sel, weight, bias, teacher, index, valid, lse_s, lse_t, coef)
        ctx.meta = (tau, chunk, blk, tuple(hidden.shape), hidden.dtype)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor
    ) -> tuple[Tensor | None, ...]:
        h_sel, weight, bias, teacher, index, valid, lse_s, lse_t, coef = ctx.saved_tensors
        tau, chunk, blk, (b, n, d), h_dtype = ctx.meta
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        c = weight.shape[0]
        k = index.shape[1]
        r = b * k
        dev = h_sel.device
        grad_h = torch.zeros((r, d), dtype=torch.float32, device=dev) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros(c, dtype=torch.float32, device=dev) if need_b else None
        if r > 0 and c > 0 and (need_h or need_w or need_b):
            coef_r = (coef * (tau * grad_output.to(torch.float32))).unsqueeze(1) * valid
            coef_r = coef_r.reshape(r).contiguous()
            for c0 in range(0, c, chunk):
                c1 = min(c, c0 + chunk)
                w_c = weight[c0:c1]
                z = F.linear(h_sel, w_c, None if bias is None else bias[c0:c1])
                _chunk_grad[(r,)](
                    z, z.stride(0), teacher, teacher.stride(0), teacher.stride(1),
                    index, index.stride(0), index.stride(1), lse_s, lse_t, coef_r,
                    k, n, c0, c1 - c0, 1.0 / tau,
                    BLOCK=blk, num_warps=num_warps_for(blk),
                )  # fmt: skip
                # z now holds d loss / d logits of the chunk
                if grad_h is not None:
                    grad_h.add_(z @ w_c)
                if grad_w is not None:
                    torch.mm(z.t(), h_sel, out=grad_w[c0:c1])
                if grad_b is not None:
                    grad_b[c0:c1] = z.sum(0, dtype=torch.float32)
        grad_hidden = None
        if need_h:
            pos = torch.where(valid, index, torch.zeros_like(index)).long()
            flat = (torch.arange(b, device=dev).unsqueeze(1) * n + pos).reshape(r)
            grad_hidden = torch.zeros((b * n, d), dtype=h_dtype, device=dev)
            # unselected slots carry zero rows, so adding them (at position 0) changes nothing
            grad_hidden.index_add_(0, flat, grad_h.to(h_dtype))
            grad_hidden = grad_hidden.view(b, n, d)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_hidden, grad_w, grad_b, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------
# public, dispatching entry points


def _token_kl_triton(
    student_logits: Tensor,
    teacher_logits: Tensor,
    index: Tensor,
    weights: Tensor,
    tau: float,
    block: int | None = None,
) -> Tensor:
    op = "token_kl"
    _check_token_kl_inputs(student_logits, teacher_logits, index, weights, tau)
    check_same_device(
        op, student_logits=student_logits, teacher_logits=teacher_logits, index=index,
        weights=weights,
    )  # fmt: skip
    check_kernel_dtype(op, student_logits=student_logits, teacher_logits=teacher_logits)
    if index.device.type != "cuda" or sync_checks_enabled():
        check_index(op, index, student_logits.shape[1])  # else: asserted on the device
    return TokenKLFunction.apply(
        row_contiguous(student_logits),
        row_contiguous(teacher_logits.detach()),
        index,
        weights.detach(),
        float(tau),
        block,
    )


def token_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    index: Tensor,
    weights: Tensor,
    tau: float = 1.0,
    backend: str = "auto",
) -> Tensor:
    """Weighted, tau^2-scaled, per-instance-mean KL(teacher || student) on selected tokens.

    Args:
        student_logits: ``[B, N, C]`` fp32/fp16/bf16, unit stride along ``C`` (other layouts are
            copied); gradients flow here.
        teacher_logits: ``[B, N, C]`` (any of the three dtypes; constant).
        index: ``[B, k]`` int32/int64 selected positions, ``-1`` for none (a position listed
            twice counts twice, as in the reference).
        weights: ``[B]`` instance weights (constant).
        tau: temperature, finite and > 0.
        backend: ``"auto"`` (Triton on CUDA when triton imports, else the reference),
            ``"triton"`` (raises if it cannot run: needs CUDA or ``TRITON_INTERPRET=1``), or
            ``"reference"`` (:func:`token_kl_reference`).

    Returns:
        Scalar fp32 loss. Within fp32 rounding of the reference; the gradient is rounded once to
        the student's dtype.
    """
    tensors = (student_logits, teacher_logits, index, weights)
    if resolve_backend(backend, "token_kl", *tensors) == "reference":
        return token_kl_reference(student_logits, teacher_logits, index, weights, tau)
    return _token_kl_triton(student_logits, teacher_logits, index, weights, tau)


def _fused_linear_token_kl_triton(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher_logits: Tensor,
    index: Tensor,
    weights: Tensor,
    tau: float,
    chunk_size: int | None = None,
    block: int | None = None,
) -> Tensor:
    op = "fused_linear_token_kl"
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{op}: hidden [B, N, d] and weight [C, d] must agree on d, got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    b, n, d = hidden.shape
    c = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"{op}: bias must be [C] = ({c},), got shape {tuple(bias.shape)}")
    if tuple(teacher_logits.shape) != (b, n, c):
        raise ValueError(
            f"{op}: teacher_logits must be [B, N, C] = {(b, n, c)}, got "
            f"{tuple(teacher_logits.shape)}"
        )
    # shapes of index/weights, dtypes, tau: the same rules as token_kl
    _check_token_kl_inputs(teacher_logits, teacher_logits, index, weights, tau)
    check_same_device(
        op, hidden=hidden, weight=weight, bias=bias, teacher_logits=teacher_logits, index=index,
        weights=weights,
    )  # fmt: skip
    check_kernel_dtype(op, hidden=hidden, weight=weight, bias=bias, teacher_logits=teacher_logits)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != hidden.dtype:
            raise TypeError(
                f"{op}: {name} dtype {t.dtype} must equal hidden dtype {hidden.dtype} "
                "(they meet in one matmul)"
            )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"{op}: chunk_size must be a positive int or None, got {chunk_size!r}")
    check_index(op, index, n)
    chunk = chunk_size or _default_chunk(c, d)
    return FusedLinearTokenKLFunction.apply(
        hidden,
        weight,
        bias,
        row_contiguous(teacher_logits.detach()),
        index,
        weights.detach(),
        float(tau),
        chunk,
        block,
    )


def fused_linear_token_kl(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher_logits: Tensor,
    index: Tensor,
    weights: Tensor,
    tau: float = 1.0,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """:func:`token_kl` of ``hidden @ weight.T + bias`` without forming the student's logits.

    Args:
        hidden: ``[B, N, d]`` student features before the head (gradients flow here).
        weight: ``[C, d]`` head weight; bias: ``[C]`` or None (gradients flow to both), same
            dtype as ``hidden``.
        teacher_logits, index, weights, tau: as in :func:`token_kl`.
        backend: as in :func:`token_kl`.
        chunk_size: columns of ``C`` per chunk on the Triton path (default: about ``4*d``, at
            least 1024); ignored by the reference.

    Returns:
        Scalar fp32 loss.
    """
    tensors = (hidden, weight, bias, teacher_logits, index, weights)
    if resolve_backend(backend, "fused_linear_token_kl", *tensors) == "reference":
        return fused_linear_token_kl_reference(
            hidden, weight, bias, teacher_logits, index, weights, tau
        )
    return _fused_linear_token_kl_triton(
        hidden, weight, bias, teacher_logits, index, weights, tau, chunk_size
    )
