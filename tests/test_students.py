"""Built-in student and its word tokenizer."""

from __future__ import annotations

import pytest
import torch

from mad_distill.align import split_words
from mad_distill.students import SPECIAL_TOKENS, BuiltinVLStudent, WordTokenizer
from mad_distill.types import IMAGE, OTHER, TEXT

CORPUS = ["What color is the cube?", "A red cube left of a blue ball.", "is it red"]


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer.build(CORPUS, max_length=16)


def test_vocab_starts_with_specials_and_is_frequency_ordered(tok):
    assert tuple(tok.vocab[:5]) == SPECIAL_TOKENS
    # "a", "cube", "is", "red" appear twice; ties alphabetical
    assert tok.vocab[5:9] == ["a", "cube", "is", "red"]


@pytest.mark.parametrize("text", ["What's the  colour, of it?", "a red-cube", "", "Ünïcode ok"])
def test_word_ids_match_split_words(tok, text):
    enc = tok([text])
    wids = enc["word_ids"][0][enc["attention_mask"][0]].tolist()
    n = len(split_words(text))
    assert wids == [-1] + list(range(n)) + [-1]
    ids = enc["input_ids"][0][1 : 1 + n].tolist()
    expect = [tok.token_id(text[s:e]) for s, e in split_words(text)]
    assert ids == expect


def test_pair_word_ids_index_the_joined_text(tok):
    q, a = "Is it red?", "a blue ball"
    enc = tok([q], pairs=[a])
    wids = enc["word_ids"][0].tolist()
    ids = enc["input_ids"][0].tolist()
    joined = split_words(q + " " + a)
    for i, w in zip(ids, wids):
        if w >= 0:
            s, e = joined[w]
            assert i == tok.token_id((q + " " + a)[s:e])
    assert ids.count(tok.sep_id) == 2 and max(wids) == len(joined) - 1


def test_padding_truncation_and_unknown(tok):
    enc = tok(["red", "zebra " * 30], max_length=8)
    assert enc["input_ids"].shape == (2, 8)
    assert enc["attention_mask"][0].tolist() == [True] * 3 + [False] * 5
    assert enc["input_ids"][1, 1].item() == tok.unk_id
    assert enc["input_ids"][1, -1].item() == tok.sep_id
    assert tok(["red"], pad_to_max=True)["input_ids"].shape == (1, 16)


def test_save_load_roundtrip(tok, tmp_path):
    p = tmp_path / "vocab.json"
    tok.save(p)
    tok2 = WordTokenizer.load(p)
    assert tok2.vocab == tok.vocab and tok2.max_length == tok.max_length
    assert torch.equal(tok2(CORPUS)["input_ids"], tok(CORPUS)["input_ids"])


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        WordTokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="bad.json"):
        WordTokenizer.load(bad)
    with pytest.raises(ValueError, match="special tokens"):
        WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="min_freq"):
        WordTokenizer.build(CORPUS, min_freq=0)
    with pytest.raises(TypeError, match="corpus"):
        WordTokenizer.build("a single string")
    with pytest.raises(ValueError, match="max_length"):
        WordTokenizer(list(SPECIAL_TOKENS), max_length=2)


def _student(tok, **kw):
    torch.manual_seed(0)
    return BuiltinVLStudent(len(tok), num_classes=3, image_size=16, patch_size=4, dim=32, **kw)


def test_classify_forward_tokens(tok):
    model = _student(tok, depth=2, tap_layer=0)
    enc = tok(["Is it red?", "cube"])
    out = model(torch.randn(2, 3, 16, 16), **enc)
    t = out.tokens
    L = enc["input_ids"].shape[1]
    assert out.logits.shape == (2, 3) and t.hidden.shape == (2, L + 16, 32)
    assert t.image_grid == (4, 4)
    assert (t.kinds[:, L:] == IMAGE).all() and t.mask[:, L:].all()
    assert t.kinds[0, :L].tolist() == [OTHER] + [TEXT] * 4 + [OTHER]
    assert t.kinds[1, :L].tolist() == [OTHER, TEXT, OTHER] + [OTHER] * (L - 3)
    assert t.mask[1, :L].tolist() == [True] * 3 + [False] * (L - 3)
    assert torch.equal(t.word_ids[:, :L], enc["word_ids"])
    assert (t.word_ids[:, L:] == -1).all()
    assert t.mlm_logits is None and t.logits is out.logits


def test_padding_does_not_change_outputs(tok):
    model = _student(tok).eval()
    img = torch.randn(1, 3, 16, 16)
    short = tok(["is it red"])
    long = tok(["is it red"], pad_to_max=True)
    a, b = model(img, **short), model(img, **long)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def test_multiple_choice_and_mlm_head(tok):
    model = _student(tok, mlm_vocab_size=7, task="multiple_choice")
    q = ["is it red"] * 8
    cands = ["a cube", "a ball", "red", "blue"] * 2
    enc = {k: v.view(2, 4, -1) for k, v in tok(q, pairs=cands).items()}
    img = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    out = model(img, **enc, token_choice=torch.tensor([2, 1]))
    assert out.logits.shape == (2, 4) and out.pooled.shape == (2, 4, 32)
    L = enc["input_ids"].shape[-1]
    assert torch.equal(out.tokens.word_ids[0, :L], enc["word_ids"][0, 2])
    assert torch.equal(out.tokens.word_ids[1, :L], enc["word_ids"][1, 1])
    assert out.tokens.mlm_logits.shape == (2, L + 16, 7) and model.head.out_features == 1
    # each candidate is scored independently: the same (image, text) gives the same score
    torch.testing.assert_close(out.logits[0], out.logits[1])


def test_gradients_reach_embeddings(tok):
    model = _student(tok)
    enc = tok(["is it red"])
    out = model(torch.randn(1, 3, 16, 16), **enc)
    (out.logits.sum() + out.tokens.hidden.sum()).backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0
    assert model.word_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(task="regress"), "task"),
        (dict(image_size=15), "divisible by patch_size"),
        (dict(dim=30, heads=4), "divisible by heads"),
        (dict(tap_layer=5), "tap_layer"),
        (dict(num_classes=0), "num_classes"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_student_bad_config(kw, match):
    args = dict(vocab_size=10, num_classes=2, image_size=16, patch_size=4, dim=32, heads=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        BuiltinVLStudent(**args)


def test_student_bad_inputs(tok):
    model = _student(tok)
    enc = tok(["is it red"])
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(1, 3, 32, 32), **enc)
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randn(1, 3, 16, 16), enc["input_ids"], enc["attention_mask"][:, :2])
    with pytest.raises(ValueError, match=r"input_ids must be \[B, L\]"):
        model(torch.randn(1, 3, 16, 16), enc["input_ids"][None], enc["attention_mask"][None])
    with pytest.raises(ValueError, match="max_text_len"):
        long = torch.ones(1, 80, dtype=torch.long)
        model(torch.randn(1, 3, 16, 16), long, long.bool())
