"""The PyTorch references in ``mad_distill.ops`` against brute-force Python loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mad_distill.ops import (
    feature_loss_reference,
    fused_linear_token_kl_reference,
    select_tokens_reference,
    token_kl_reference,
)

SETTINGS = settings(max_examples=25, deadline=None)


def _random_case(seed: int, b: int, n: int, p_valid: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    # a few repeated values so tie-breaking is exercised
    scores = torch.randint(0, 5, (b, n), generator=g).float() + 0.1 * torch.randn(b, n, generator=g)
    scores[:, ::3] = 1.0
    mask = torch.rand(b, n, generator=g) < p_valid
    if b > 1:
        mask[-1] = False  # an all-masked row
    return scores, mask, g


def _brute_select(scores, mask, k, k_per_row=None):
    b, n = scores.shape
    index = [[-1] * k for _ in range(b)]
    for r in range(b):
        cand = [j for j in range(n) if mask[r, j]]
        cand.sort(key=lambda j: (-float(scores[r, j]), j))
        keep = len(cand) if k_per_row is None else min(int(k_per_row[r]), len(cand))
        keep = min(keep, k)
        for i in range(keep):
            index[r][i] = cand[i]
    return torch.tensor(index, dtype=torch.long).reshape(b, k)


def _random_index(g, b, n, k):
    """Distinct positions per row, -1 padded at random places."""
    index = torch.full((b, k), -1, dtype=torch.long)
    for r in range(b):
        perm = torch.randperm(n, generator=g)[:k]
        n_keep = int(torch.randint(0, k + 1, (1,), generator=g))
        index[r, :n_keep] = perm[:n_keep]
    return index


@SETTINGS
@given(
    b=st.integers(1, 5),
    n=st.integers(1, 13),
    data=st.data(),
    seed=st.integers(0, 10_000),
)
def test_select_reference_matches_loop(b, n, data, seed):
    scores, mask, g = _random_case(seed, b, n)
    k = data.draw(st.integers(0, n))
    per_row = data.draw(st.booleans())
    k_per_row = torch.randint(0, k + 1, (b,), generator=g) if per_row else None
    index, valid = select_tokens_reference(scores, mask, k, k_per_row)
    expected = _brute_select(scores, mask, k, k_per_row)
    assert torch.equal(index, expected)
    assert torch.equal(valid, expected >= 0)


def test_select_reference_errors():
    s, m = torch.randn(2, 4), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="k=5"):
        select_tokens_reference(s, m, 5)
    with pytest.raises(ValueError, match="k must be"):
        select_tokens_reference(s, m, -1)
    with pytest.raises(TypeError, match="mask must be bool"):
        select_tokens_reference(s, m.long(), 1)


def _brute_token_kl(s, t, index, weights, tau):
    b, _, _ = s.shape
    total = 0.0
    for r in range(b):
        terms = []
        for j in index[r].tolist():
            if j < 0:
                continue
            ps = torch.softmax(s[r, j].double() / tau, -1).tolist()
            pt = torch.softmax(t[r, j].double() / tau, -1).tolist()
            terms.append(sum(q * (math.log(q) - math.log(p)) for q, p in zip(pt, ps) if q > 0))
        if terms:
            total += float(weights[r]) * tau * tau * sum(terms) / len(terms)
    return total / b


@SETTINGS
@given(
    b=st.integers(1, 4),
    n=st.integers(1, 7),
    c=st.integers(1, 9),
    tau=st.floats(0.25, 4.0),
    seed=st.integers(0, 10_000),
)
def test_token_kl_reference_matches_loop(b, n, c, tau, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, n, c, generator=g) * 3, torch.randn(b, n, c, generator=g) * 3
    k = int(torch.randint(0, n + 1, (1,), generator=g))
    index = _random_index(g, b, n, k)
    weights = torch.rand(b, generator=g) * 2
    got = token_kl_reference(s, t, index, weights, tau)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(_brute_token_kl(s, t, index, weights, tau), abs=1e-5)


def test_fused_linear_reference_matches_loop():
    g = torch.Generator().manual_seed(0)
    b, n, d, c = 3, 5, 4, 7
    h, w, bias = torch.randn(b, n, d, generator=g), torch.randn(c, d, generator=g), torch.randn(c)
    t = torch.randn(b, n, c, generator=g)
    index = _random_index(g, b, n, 3)
    weights = torch.rand(b, generator=g)
    logits = torch.empty(b, n, c)
    for r in range(b):
        for j in range(n):
            logits[r, j] = w @ h[r, j] + bias
    expected = _brute_token_kl(logits, t, index, weights, 2.0)
    got = fused_linear_token_kl_reference(h, w, bias, t, index, weights, 2.0)
    assert float(got) == pytest.approx(expected, abs=1e-5)


def _brute_feature(s, t, index, weights, loss):
    b = s.shape[0]
    total = 0.0
    for r in range(b):
        terms = []
        for j in index[r].tolist():
            if j < 0:
                continue
            u = s[r, j].double() / s[r, j].double().norm().clamp(min=1e-12)
            v = t[r, j].double() / t[r, j].double().norm().clamp(min=1e-12)
            if loss == "cosine":
                terms.append(1 - float(u @ v))
            elif loss == "mse":
                terms.append(float(((u - v) ** 2).mean()))
            else:
                diff = (u - v).abs()
                terms.append(float(torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()))
        if terms:
            total += float(weights[r]) * sum(terms) / len(terms)
    return total / b


@SETTINGS
@given(
    b=st.integers(1, 4),
    n=st.integers(1, 7),
    d=st.integers(1, 6),
    loss=st.sampled_from(["cosine", "mse", "smooth_l1"]),
    seed=st.integers(0, 10_000),
)
def test_feature_loss_reference_matches_loop(b, n, d, loss, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, n, d, generator=g), torch.randn(b, n, d, generator=g)
    index = _random_index(g, b, n, int(torch.randint(0, n + 1, (1,), generator=g)))
    weights = torch.rand(b, generator=g)
    got = feature_loss_reference(s, t, index, weights, loss)
    assert float(got) == pytest.approx(_brute_feature(s, t, index, weights, loss), abs=1e-5)


def test_reference_errors_name_the_argument():
    s = torch.randn(2, 3, 4)
    idx, w = torch.zeros(2, 1, dtype=torch.long), torch.ones(2)
    with pytest.raises(ValueError, match="index has a position"):
        token_kl_reference(s, s, idx + 3, w, 1.0)
    with pytest.raises(ValueError, match="tau"):
        token_kl_reference(s, s, idx, w, 0.0)
    with pytest.raises(ValueError, match="weights"):
        feature_loss_reference(s, s, idx, torch.ones(3))
    with pytest.raises(ValueError, match="loss"):
        feature_loss_reference(s, s, idx, w, "l3")
    with pytest.raises(ValueError, match="agree on d"):
        fused_linear_token_kl_reference(s, torch.randn(5, 3), None, s, idx, w)
