"""HFTextTeacher: a tiny RoBERTa saved locally, and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mad_distill.align import split_words
from mad_distill.teachers import HFTextTeacher, create_teacher
from mad_distill.types import TeacherTextOutput

TEXTS = [
    "Hello, world!",
    "The unbelievably long hyphenated-word.",
    "",
    "  What's   the cat's umbrella?",
]


@pytest.fixture(scope="module")
def roberta(tiny_roberta_dir):
    return create_teacher(f"hf:{tiny_roberta_dir}")


@pytest.fixture(scope="module")
def roberta_mlm(tiny_roberta_dir):
    return create_teacher(f"hf-mlm:{tiny_roberta_dir}")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return create_teacher(f"hf:{minilm_dir}")


def test_outputs_shapes_and_mask(roberta):
    assert isinstance(roberta, HFTextTeacher) and not roberta.mlm
    out = roberta.encode_text(TEXTS)
    assert isinstance(out, TeacherTextOutput)
    b, t, d = out.tokens.shape
    assert (b, d) == (4, 32) and roberta.token_dim == roberta.embed_dim == 32
    assert out.mask.shape == out.word_ids.shape == out.attention.shape == (b, t)
    assert out.mlm_logits is None and out.tokens_joint is None
    enc = roberta.tokenizer(TEXTS, padding=True)
    assert torch.equal(out.mask, torch.tensor(enc["attention_mask"]).bool())
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(4))
    assert bool((out.word_ids[~out.mask] == -1).all())
    assert bool((out.word_ids[:, 0] == -1).all())  # <s>


def test_word_ids_cover_words(roberta):
    out = roberta.encode_text(TEXTS)
    ids = roberta.tokenizer(TEXTS, padding=True)["input_ids"]
    for i, text in enumerate(TEXTS):
        words = split_words(text)
        assert out.word_ids[i].max() == len(words) - 1
        if "'" in text:  # "'s" is one piece, it belongs to the word of its first char, "'"
            continue
        for w, (s, e) in enumerate(words):
            pieces = [ids[i][j] for j in range(len(ids[i])) if out.word_ids[i, j] == w]
            decoded = roberta.tokenizer.decode(pieces).strip()
            assert decoded == text[s:e], (text, w, decoded)
    text = TEXTS[3]
    apostrophe = [j for j, t in enumerate(roberta.tokenizer.tokenize(text)) if "'" in t]
    row = out.word_ids[3, 1:]  # skip <s>
    words = split_words(text)
    assert [text[slice(*words[int(row[j])])] for j in apostrophe] == ["'", "'"]


def test_pooling_and_attention_against_model(roberta, tiny_roberta_dir):
    out = roberta.encode_text(TEXTS[:2])
    enc = roberta.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = roberta.model(**enc, output_attentions=True)
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = (ref.last_hidden_state * m).sum(1) / m.sum(1)
    torch.testing.assert_close(out.pooled, F.normalize(mean, dim=-1))
    torch.testing.assert_close(out.tokens, ref.last_hidden_state)
    att = ref.attentions[-1].mean(1)[:, 0]
    torch.testing.assert_close(out.attention, att)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2))
    cls = HFTextTeacher.from_pretrained(str(tiny_roberta_dir), pooling="cls", normalize=False)
    torch.testing.assert_close(cls.encode_text(TEXTS[:2]).pooled, ref.last_hidden_state[:, 0])
    assert cls.identity != roberta.identity  # pooling changes outputs, so identity


def test_mlm_logits(roberta_mlm, roberta):
    assert roberta_mlm.mlm
    out = roberta_mlm.encode_text(TEXTS)
    assert out.mlm_logits.shape == (*out.tokens.shape[:2], roberta_mlm.vocab_size)
    # the MLM model's encoder is the same network as the plain AutoModel's
    torch.testing.assert_close(out.tokens, roberta.encode_text(TEXTS).tokens)
    assert roberta_mlm.identity.startswith("hf-mlm:roberta[")


def test_frozen_eval_no_grad(roberta):
    roberta.train()
    assert not roberta.training and not any(m.training for m in roberta.modules())
    assert not any(p.requires_grad for p in roberta.parameters())
    a = roberta.encode_text(TEXTS)
    b = roberta.encode_text(TEXTS)
    assert torch.equal(a.tokens, b.tokens)  # no dropout
    assert not a.tokens.requires_grad


def test_bad_inputs(roberta, tiny_roberta_dir):
    with pytest.raises(TypeError, match="list of strings"):
        roberta.encode_text("one string")
    with pytest.raises(ValueError, match="not be empty"):
        roberta.encode_text([])
    with pytest.raises(ValueError, match="pooling must be one of"):
        HFTextTeacher.from_pretrained(str(tiny_roberta_dir), pooling="max")


def test_truncation_respects_positions(roberta):
    out = roberta.encode_text(["word " * 200])
    assert out.tokens.shape[1] == roberta.max_length <= 38  # 40 positions - (pad_id + 1)


def test_real_minilm_paraphrases(minilm):
    assert minilm.embed_dim == 384
    pairs = [
        ("A man is playing a guitar.", "Someone is playing an instrument."),
        ("A dog runs across the grassy field.", "A puppy is running on the grass."),
    ]
    unrelated = "The stock market fell sharply on Tuesday."
    for a, b in pairs:
        emb = minilm.encode_text([a, b, unrelated]).pooled
        para = float(emb[0] @ emb[1])
        other = max(float(emb[0] @ emb[2]), float(emb[1] @ emb[2]))
        assert para > other + 0.2, (a, para, other)


def test_real_minilm_word_ids(minilm):
    text = "Unbelievably, the surfboard's owner left."
    out = minilm.encode_text([text])
    ids = minilm.tokenizer([text])["input_ids"][0]
    words = split_words(text)
    for w, (s, e) in enumerate(words):
        pieces = minilm.tokenizer.convert_ids_to_tokens(
            [ids[j] for j in range(len(ids)) if out.word_ids[0, j] == w]
        )
        assert "".join(p.removeprefix("##") for p in pieces) == text[s:e].lower()
