"""Token scores and ``select_tokens`` (k / ratio rules, masks, errors)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mad_distill.selection import (
    attention_scores,
    compute_scores,
    discrepancy_scores,
    given_scores,
    relevance_scores,
    select_tokens,
)

SETTINGS = settings(max_examples=30, deadline=None)


def _brute(scores, mask, width, keep_per_row):
    b, n = scores.shape
    out = torch.full((b, width), -1, dtype=torch.long)
    for r in range(b):
        cand = sorted((j for j in range(n) if mask[r, j]), key=lambda j: (-float(scores[r, j]), j))
        keep = min(keep_per_row[r], len(cand))
        out[r, :keep] = torch.tensor(cand[:keep], dtype=torch.long)
    return out


def _case(seed, b, n):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=g)
    scores[:, 1::4] = 0.5  # ties
    mask = torch.rand(b, n, generator=g) < 0.7
    mask[0] = False  # an all-masked row
    return scores, mask


@SETTINGS
@given(b=st.integers(1, 5), n=st.integers(1, 17), data=st.data(), seed=st.integers(0, 9999))
def test_fixed_k_matches_loop(b, n, data, seed):
    scores, mask = _case(seed, b, n)
    k = data.draw(st.integers(0, n))
    index, valid = select_tokens(scores, mask, k=k)
    assert index.shape == (b, k) and valid.shape == (b, k)
    n_valid = mask.sum(1).tolist()
    assert torch.equal(index, _brute(scores, mask, k, [min(k, v) for v in n_valid]))
    assert torch.equal(valid, index >= 0)
    assert valid.sum(1).tolist() == [min(k, v) for v in n_valid]  # k clipped to n_valid


@SETTINGS
@given(
    b=st.integers(1, 5),
    n=st.integers(1, 17),
    ratio=st.sampled_from([0.05, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 1.0]),
    seed=st.integers(0, 9999),
)
def test_ratio_matches_loop(b, n, ratio, seed):
    scores, mask = _case(seed, b, n)
    index, valid = select_tokens(scores, mask, ratio=ratio)
    frac = Fraction(ratio).limit_denominator(1_000_000)
    assert index.shape == (b, math.ceil(frac * n))
    keep = [math.ceil(frac * int(v)) for v in mask.sum(1)]
    assert valid.sum(1).tolist() == keep
    assert torch.equal(index, _brute(scores, mask, index.shape[1], keep))
    # every selected position is a valid token and appears once
    for r in range(b):
        chosen = index[r][valid[r]].tolist()
        assert len(set(chosen)) == len(chosen)
        assert all(bool(mask[r, j]) for j in chosen)


def test_ratio_is_exact_for_decimal_ratios():
    # 0.7 * 10 = 7.000000000000001 in floating point; the selection must keep 7, not 8
    mask = torch.ones(2, 10, dtype=torch.bool)
    index, valid = select_tokens(torch.randn(2, 10), mask, ratio=0.7)
    assert index.shape == (2, 7) and valid.all()


def test_all_masked_and_empty():
    scores, mask = torch.randn(3, 6), torch.zeros(3, 6, dtype=torch.bool)
    index, valid = select_tokens(scores, mask, ratio=0.5)
    assert (index == -1).all() and not valid.any()
    index, valid = select_tokens(scores, mask, k=0)
    assert index.shape == (3, 0) and valid.shape == (3, 0)
    index, valid = select_tokens(torch.randn(0, 4), torch.ones(0, 4, dtype=torch.bool), k=2)
    assert index.shape == (0, 2)


def test_nonfinite_scores_only_matter_where_valid():
    scores = torch.tensor([[1.0, float("nan"), 2.0, float("inf")]])
    mask = torch.tensor([[True, False, True, False]])
    index, _ = select_tokens(scores, mask, k=2)
    assert index.tolist() == [[2, 0]]
    with pytest.raises(ValueError, match="NaN or inf"):
        select_tokens(scores, torch.ones_like(mask), k=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        select_tokens(torch.tensor([[1.0, -float("inf")]]), torch.ones(1, 2, dtype=torch.bool), k=1)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(k=7), ValueError, "k=7"),
        (dict(k=-1), ValueError, "k must be"),
        (dict(k=1.5), TypeError, "k must be an int"),
        (dict(k=True), TypeError, "k must be an int"),
        (dict(), ValueError, "exactly one of k and ratio"),
        (dict(k=2, ratio=0.5), ValueError, "exactly one of k and ratio"),
        (dict(ratio=0.0), ValueError, r"ratio must be in \(0, 1\]"),
        (dict(ratio=1.5), ValueError, r"ratio must be in \(0, 1\]"),
        (dict(ratio=float("nan")), ValueError, "ratio"),
        (dict(ratio="0.3"), TypeError, "ratio"),
        (dict(k=2, backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_select_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        select_tokens(torch.randn(2, 6), torch.ones(2, 6, dtype=torch.bool), **kwargs)


def test_select_bad_tensors():
    ok = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="scores must be"):
        select_tokens(torch.randn(2, 6, 1), ok, k=1)
    with pytest.raises(ValueError, match="mask must have the shape"):
        select_tokens(torch.randn(2, 5), ok, k=1)
    with pytest.raises(TypeError, match="mask must be bool"):
        select_tokens(torch.randn(2, 6), ok.long(), k=1)
    with pytest.raises(TypeError, match="scores must be floating"):
        select_tokens(torch.ones(2, 6, dtype=torch.long), ok, k=1)


def test_relevance_scores_is_cosine_and_detached():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5, 3, generator=g, requires_grad=True)
    pooled = torch.randn(2, 3, generator=g)
    got = relevance_scores(tokens, pooled)
    assert got.shape == (2, 5) and not got.requires_grad
    for b in range(2):
        for t in range(5):
            u, v = tokens[b, t].detach(), pooled[b]
            assert float(got[b, t]) == pytest.approx(float(u @ v / (u.norm() * v.norm())), 1e-5)
    with pytest.raises(ValueError, match="other_pooled"):
        relevance_scores(tokens, torch.randn(2, 4))
    with pytest.raises(ValueError, match="teacher_tokens_joint"):
        relevance_scores(torch.randn(2, 3), pooled)


def test_relevance_scores_bf16_inputs_give_fp32():
    got = relevance_scores(torch.randn(1, 4, 8).bfloat16(), torch.randn(1, 8).bfloat16())
    assert got.dtype == torch.float32


def test_attention_scores_heads_mean():
    attn = torch.rand(2, 4, 6)
    assert torch.allclose(attention_scores(attn), attn.mean(1))
    assert torch.equal(attention_scores(attn[:, 0]), attn[:, 0])
    with pytest.raises(ValueError, match="attention must be"):
        attention_scores(torch.rand(6))
    with pytest.raises(TypeError, match="attention must be floating"):
        attention_scores(torch.ones(2, 6, dtype=torch.long))


@pytest.mark.parametrize("loss", ["cosine", "mse", "smooth_l1"])
def test_discrepancy_scores_per_token(loss):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    t = torch.randn(2, 4, 5, generator=g)
    got = discrepancy_scores(s, t, loss)
    assert got.shape == (2, 4) and not got.requires_grad
    u = s.detach() / s.detach().norm(dim=-1, keepdim=True)
    v = t / t.norm(dim=-1, keepdim=True)
    if loss == "cosine":
        want = 1 - (u * v).sum(-1)
    elif loss == "mse":
        want = ((u - v) ** 2).mean(-1)
    else:
        diff = (u - v).abs()
        want = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean(-1)
    assert torch.allclose(got, want, atol=1e-6)
    # the token where student == teacher has zero discrepancy
    s2 = t.clone()
    assert torch.allclose(discrepancy_scores(s2, t, loss), torch.zeros(2, 4), atol=1e-6)


def test_discrepancy_and_given_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        discrepancy_scores(torch.randn(1, 2, 3), torch.randn(1, 2, 3), "l1")
    with pytest.raises(ValueError, match="student_proj and teacher"):
        discrepancy_scores(torch.randn(1, 2, 3), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match=r"given scores must be \[B, N\] = \(2, 3\)"):
        given_scores(torch.randn(2, 4), (2, 3))
    with pytest.raises(TypeError, match="given scores must be floating"):
        given_scores(torch.ones(2, 3, dtype=torch.long))


def test_compute_scores_dispatch_and_missing_inputs():
    attn = torch.rand(2, 5)
    assert torch.equal(compute_scores("attention", attention=attn), attn)
    given = torch.randn(2, 5)
    assert torch.equal(compute_scores("given", given=given), given)
    with pytest.raises(ValueError, match=r"needs \['other_pooled'\]"):
        compute_scores("relevance", teacher_tokens_joint=torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="source must be one of"):
        compute_scores("saliency", attention=attn)
