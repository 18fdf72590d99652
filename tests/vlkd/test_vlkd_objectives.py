from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, BartForConditionalGeneration

from mad_distill.vlkd.objectives import (
    ImagePrefix,
    check_objective_names,
    image_conditioned_infilling,
    image_text_contrastive,
    pool_text,
    prefix_encoder_outputs,
    span_mask,
    text_text_distance,
)

MASK, PAD, BOS, EOS = 4, 1, 0, 2


# --- pooling ---------------------------------------------------------------------------------
def test_pool_mean_and_eos_match_manual():
    h = torch.randn(2, 5, 3)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    mean = pool_text(h, m, "mean")
    assert torch.allclose(mean[0], h[0, :3].mean(0)) and torch.allclose(mean[1], h[1].mean(0))
    eos = pool_text(h, m, "eos")
    assert torch.equal(eos[0], h[0, 2]) and torch.equal(eos[1], h[1, 4])


def test_pool_errors():
    h = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="empty caption"):
        pool_text(h, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="allowed"):
        pool_text(h, torch.ones(2, 4), "max")
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        pool_text(h, torch.ones(2, 3))


def test_unknown_objective_names():
    check_objective_names(["ttdm", "icti"])
    with pytest.raises(ValueError, match=r"unknown VLKD objective.*'itm'.*allowed"):
        check_objective_names(["ttdm", "itm"])


# --- TTDM ------------------------------------------------------------------------------------
@pytest.mark.parametrize("distance", ["l2", "l1", "cosine"])
def test_ttdm_matches_manual_and_grad_to_student_only(distance):
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    loss = text_text_distance(s, t, distance)
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    expected = {
        "l2": ((sn - tn) ** 2).sum(-1).mean(),
        "l1": (sn - tn).abs().sum(-1).mean(),
        "cosine": (1 - (sn * tn).sum(-1)).mean(),
    }[distance]
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_ttdm_unnormalised_and_zero_at_target():
    t = torch.randn(3, 5)
    assert text_text_distance(t.clone(), t, "l2", normalize=False).item() == 0.0
    assert text_text_distance(2 * t, t, "cosine").abs().item() < 1e-6
    s = torch.randn(3, 5)
    l1 = text_text_distance(s, t, "l1", normalize=False)
    assert torch.allclose(l1, (s - t).abs().sum(-1).mean())
    # on unit vectors, squared L2 = 2 - 2 cos
    assert torch.allclose(
        text_text_distance(s, t, "l2"), 2 * text_text_distance(s, t, "cosine"), atol=1e-5
    )


def test_ttdm_errors():
    with pytest.raises(ValueError, match="embedding sizes differ.*projection"):
        text_text_distance(torch.randn(2, 8), torch.randn(2, 6))
    with pytest.raises(ValueError, match="batch sizes differ"):
        text_text_distance(torch.randn(3, 6), torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"unknown TTDM distance 'huber'.*allowed"):
        text_text_distance(torch.randn(2, 6), torch.randn(2, 6), "huber")


# --- ITC -------------------------------------------------------------------------------------
def test_itc_is_symmetric_infonce():
    s = torch.randn(5, 8, requires_grad=True)
    img = torch.randn(5, 8, requires_grad=True)
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    loss = image_text_contrastive(s, img, scale)
    logits = 10.0 * F.normalize(img, dim=-1) @ F.normalize(s, dim=-1).T
    labels = torch.arange(5)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(loss, expected, atol=1e-5)
    loss.backward()
    assert s.grad.abs().sum() > 0 and scale.grad is not None and img.grad is None


def test_itc_clamps_scale_and_low_when_aligned():
    img = torch.eye(4, 8)
    big = torch.tensor(20.0)  # exp(20) >> 100: clamped
    loss = image_text_contrastive(img.clone(), img, big, max_logit_scale=100.0)
    logits = 100.0 * img @ img.T
    labels = torch.arange(4)
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-5)
    assert loss.item() < 1e-6


def test_itc_errors():
    with pytest.raises(ValueError, match="embedding sizes differ"):
        image_text_contrastive(torch.randn(2, 8), torch.randn(2, 6), torch.tensor(0.0))
    with pytest.raises(ValueError, match="at least 2"):
        image_text_contrastive(torch.randn(1, 6), torch.randn(1, 6), torch.tensor(0.0))
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        image_text_contrastive(torch.randn(2, 6), torch.randn(2, 6), torch.zeros(2))


# --- prefix ----------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden", [None, 0, 7])
def test_image_prefix_shapes(hidden):
    p = ImagePrefix(16, 32, prefix_len=3, hidden=hidden)
    out = p(torch.randn(2, 16))
    assert out.shape == (2, 3, 32)
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        p(torch.randn(2, 12))
    with pytest.raises(ValueError, match="prefix_len"):
        ImagePrefix(16, 32, prefix_len=0)


def test_prefix_encoder_outputs():
    h, m = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out, att = prefix_encoder_outputs(h, m, torch.randn(2, 3, 8))
    assert out.last_hidden_state.shape == (2, 8, 8)
    assert att.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8]
    assert torch.equal(out.last_hidden_state[:, 3:], h)
    same, att2 = prefix_encoder_outputs(h, m, None)
    assert same.last_hidden_state is h and att2 is m
    with pytest.raises(ValueError, match="d_model"):
        prefix_encoder_outputs(h, m, torch.randn(2, 3, 4))


# --- span masking ----------------------------------------------------------------------------
def _rows(lengths, vocab=50):
    g = torch.Generator().manual_seed(sum(lengths))
    width = max(lengths) + 2
    ids = torch.full((len(lengths), width), PAD)
    att = torch.zeros((len(lengths), width), dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, 0] = BOS
        ids[b, 1 : n + 1] = torch.randint(10, vocab, (n,), generator=g)
        ids[b, n + 1] = EOS
        att[b, : n + 2] = 1
    return ids, att


def _check_row(orig: list[int], out: list[int], ratio: float) -> int:
    """Invariants of one masked row; returns the number of masked tokens."""
    assert out[0] == BOS and out[-1] == EOS  # specials kept in place
    assert all(not (a == MASK and b == MASK) for a, b in zip(out, out[1:]))  # spans separate
    # every mask replaces >= 1 token, and the kept tokens are the original in order: walk both
    i = 0
    masked = 0
    for j, t in enumerate(out):
        if t != MASK:
            assert orig[i] == t
            i += 1
            continue
        nxt = out[j + 1]  # never last: </s> ends the row
        start = i
        while orig[i] != nxt or i == start:
            i += 1
        masked += i - start
    assert i == len(orig)
    n = len(orig) - 2
    budget = 0 if ratio == 0 else max(1, round(ratio * n))
    assert masked <= budget
    return masked


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    ratio=st.sampled_from([0.0, 0.15, 0.3, 0.5]),
    lam=st.sampled_from([0.5, 3.0]),
    seed=st.integers(0, 10_000),
)
def test_span_mask_invariants(lengths, ratio, lam, seed):
    # distinct content ids so the subsequence walk in _check_row is unambiguous
    ids, att = _rows(lengths)
    for b, n in enumerate(lengths):
        ids[b, 1 : n + 1] = torch.arange(10, 10 + n)
    g = torch.Generator().manual_seed(seed)
    out, oatt = span_mask(
        ids, att, MASK, PAD, [BOS, EOS], ratio=ratio, poisson_lambda=lam, generator=g
    )
    assert out.shape[1] <= ids.shape[1]
    for b, n in enumerate(lengths):
        orig = ids[b, : n + 2].tolist()
        row = out[b][oatt[b].bool()].tolist()
        assert (out[b][~oatt[b].bool()] == PAD).all()
        masked = _check_row(orig, row, ratio)
        if ratio == 0:
            assert row == orig
        else:
            assert masked >= 1


def test_span_mask_hits_budget_on_long_rows_and_is_reproducible():
    ids, att = _rows([40, 25, 30])
    for b, n in enumerate([40, 25, 30]):
        ids[b, 1 : n + 1] = torch.arange(10, 10 + n)

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    for seed in range(10):
        a, _ = span_mask(ids, att, MASK, PAD, [BOS, EOS], generator=gen(seed))
        b_, _ = span_mask(ids, att, MASK, PAD, [BOS, EOS], generator=gen(seed))
        assert torch.equal(a, b_)
        for r, n in enumerate([40, 25, 30]):
            row = a[r][a[r] != PAD].tolist()
            assert _check_row(ids[r, : n + 2].tolist(), row, 0.3) == round(0.3 * n)
    c, _ = span_mask(ids, att, MASK, PAD, [BOS, EOS], generator=gen(99))
    assert not torch.equal(a, c)


def test_span_mask_errors():
    ids, att = _rows([5])
    with pytest.raises(ValueError, match="mask_ratio"):
        span_mask(ids, att, MASK, PAD, ratio=1.0)
    with pytest.raises(ValueError, match="poisson_lambda"):
        span_mask(ids, att, MASK, PAD, poisson_lambda=0.0)
    empty = torch.tensor([[BOS, EOS, PAD]])
    with pytest.raises(ValueError, match="empty caption"):
        span_mask(empty, torch.tensor([[1, 1, 0]]), MASK, PAD, [BOS, EOS])


# --- ICTI ------------------------------------------------------------------------------------
def test_infilling_loss_and_gradients(bart_dir):
    model = BartForConditionalGeneration.from_pretrained(bart_dir)
    tok = AutoTokenizer.from_pretrained(bart_dir)
    enc = tok(["a red circle", "a blue square left of a cross"], padding=True, return_tensors="pt")
    masked, matt = span_mask(
        enc.input_ids,
        enc.attention_mask,
        tok.mask_token_id,
        tok.pad_token_id,
        tok.all_special_ids,
        generator=torch.Generator().manual_seed(0),
    )
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    prefix_net = ImagePrefix(16, model.config.d_model, prefix_len=2)
    loss = image_conditioned_infilling(model, masked, matt, labels, prefix_net(torch.randn(2, 16)))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in prefix_net.parameters())
    assert model.model.encoder.layers[0].fc1.weight.grad is not None
    text_only = image_conditioned_infilling(model, masked, matt, labels, None)
    assert torch.isfinite(text_only)
    with pytest.raises(ValueError, match="share B"):
        image_conditioned_infilling(model, masked[:1], matt[:1], labels, None)


@pytest.mark.parametrize("prefix_at", ["encoder_output", "encoder_input"])
def test_encode_with_prefix_places(bart_dir, prefix_at):
    from mad_distill.vlkd.objectives import encode_with_prefix

    model = BartForConditionalGeneration.from_pretrained(bart_dir)
    tok = AutoTokenizer.from_pretrained(bart_dir)
    enc = tok(["a red circle", "a blue square left of a cross"], padding=True, return_tensors="pt")
    prefix = torch.randn(2, 3, model.config.d_model, requires_grad=True)
    out, att = encode_with_prefix(model, enc.input_ids, enc.attention_mask, prefix, prefix_at)
    length = enc.input_ids.shape[1]
    assert out.last_hidden_state.shape == (2, 3 + length, model.config.d_model)
    assert att[:, :3].eq(1).all() and torch.equal(att[:, 3:], enc.attention_mask)
    text_only = model.get_encoder()(**enc).last_hidden_state
    same_text = torch.allclose(out.last_hidden_state[:, 3:], text_only, atol=1e-5)
    # output place: the text states are the text-only encoding, the prefix passes through;
    # input place: the encoder mixes the prefix into every text state
    assert same_text == (prefix_at == "encoder_output")
    out.last_hidden_state[:, 3:].sum().backward()
    assert (prefix.grad is not None and prefix.grad.abs().sum() > 0) == (
        prefix_at == "encoder_input"
    )
    with pytest.raises(ValueError, match=r"prefix_at: unknown place 'decoder'"):
        encode_with_prefix(model, enc.input_ids, enc.attention_mask, prefix, "decoder")
