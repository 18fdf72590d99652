"""The task students: ViLT through hooks (token layout, grid order), the text processors."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from mad_distill.align import split_words
from mad_distill.students import WordTokenizer
from mad_distill.students.vilt import ViltStudent
from mad_distill.tasks.students import (
    BuiltinTaskStudent,
    HFTextProcessor,
    load_text_processor,
    teacher_texts,
)
from mad_distill.types import IMAGE, OTHER, TEXT


def _images(n: int, size: int = 40) -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    return [
        Image.fromarray(torch.randint(0, 255, (size, size + 7, 3), generator=g).byte().numpy())
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def vilt(tiny_vilt_dir):
    torch.manual_seed(0)
    return ViltStudent("classify", 5, model_path=str(tiny_vilt_dir), image_size=32).eval()


def test_vilt_image_tokens_are_in_grid_order(vilt):
    """ViLT draws patches in random order; the adapter restores row-major grid order, so the
    image embeddings equal patch_embeddings + position embeddings laid out row by row."""
    px = torch.stack([vilt.image_transform(im) for im in _images(2)])
    torch.manual_seed(1)
    embeds, grid = vilt._image_embeds(px)
    emb = vilt.vilt.embeddings
    patches = emb.patch_embeddings(px).flatten(2).transpose(1, 2)  # row-major [B, 16, d]
    expected = patches + emb.position_embeddings[:, 1:]
    assert grid == (4, 4)
    torch.testing.assert_close(embeds[:, 1:], expected)
    torch.testing.assert_close(
        embeds[:, 0], (emb.cls_token + emb.position_embeddings[:, :1])[0].expand(2, -1)
    )
    # and the whole forward no longer depends on the RNG
    enc = vilt.text_processor(["what color is the cube?", "is it red?"], None)
    torch.manual_seed(2)
    a = vilt({"pixel_values": px, **enc})
    torch.manual_seed(3)
    b = vilt({"pixel_values": px, **enc})
    torch.testing.assert_close(a.hidden, b.hidden)


def test_vilt_token_layout(vilt):
    texts = ["What color is the cube?", "how many dogs?"]
    px = torch.stack([vilt.image_transform(im) for im in _images(2)])
    enc = vilt.text_processor(texts, None)
    out = vilt({"pixel_values": px, **enc})
    length = enc["input_ids"].shape[1]
    assert out.hidden.shape == (2, length + 1 + 16, 32)
    assert out.image_grid == (4, 4)
    assert out.logits.shape == (2, 5)
    kinds = out.kinds
    assert (kinds[:, length] == OTHER).all()  # image CLS
    assert (kinds[:, length + 1 :] == IMAGE).all()
    assert (kinds[:, 0] == OTHER).all()  # [CLS]
    for b, text in enumerate(texts):
        text_ids = out.word_ids[b, :length][kinds[b, :length] == TEXT]
        assert sorted(set(text_ids.tolist())) == list(range(len(split_words(text))))
    assert (out.word_ids[:, length:] == -1).all()
    assert out.mask[:, length:].all() and out.mask.dtype == torch.bool


def test_vilt_gradients_flow_through_the_hook(tiny_vilt_dir):
    s = ViltStudent(
        "classify", 3, model_path=str(tiny_vilt_dir), image_size=32, tap="encoder.layer.0"
    )
    px = torch.stack([s.image_transform(im) for im in _images(2)])
    out = s({"pixel_values": px, **s.text_processor(["a dog", "a man"], None)})
    out.hidden.pow(2).mean().backward()
    assert s.vilt.encoder.layer[0].attention.attention.query.weight.grad.abs().sum() > 0
    assert s.vilt.encoder.layer[1].attention.attention.query.weight.grad is None


def test_vilt_multiple_choice_exposes_the_chosen_run(tiny_vilt_dir):
    s = ViltStudent("multiple_choice", 0, model_path=str(tiny_vilt_dir), image_size=32).eval()
    px = torch.stack([s.image_transform(im) for im in _images(2)])
    texts, choices = ["is it red?", "a dog"], [["yes", "no the ball"], ["a man", "blue"]]
    enc = s.text_processor(texts, choices)
    assert enc["input_ids"].shape[:2] == (2, 2)
    out = s({"pixel_values": px, **enc}, token_choice=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2)
    # the exposed run's word ids index the teachers' text: text + " " + chosen choice
    seen = teacher_texts(texts, choices, torch.tensor([1, 0]))
    assert seen == ["is it red? no the ball", "a dog a man"]
    for b, text in enumerate(seen):
        ids = out.word_ids[b][out.kinds[b] == TEXT]
        assert sorted(set(ids.tolist())) == list(range(len(split_words(text))))
    with pytest.raises(ValueError, match="token_choice"):
        s({"pixel_values": px, **enc}, token_choice=torch.tensor([2, 0]))


def test_vilt_bad_paths(tiny_vilt_dir, tmp_path):
    with pytest.raises(ValueError, match=r"encoder\.layer\.1"):
        ViltStudent(
            "classify", 2, model_path=str(tiny_vilt_dir), image_size=32, tap="encoder.layers.1"
        )
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ViltStudent("classify", 2, model_path=str(tmp_path / "nope"))
    bare = tmp_path / "bare"
    shutil.copytree(tiny_vilt_dir, bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ViltStudent("classify", 2, model_path=str(bare), image_size=32)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ViltStudent("classify", 2, model_path=str(tiny_vilt_dir), image_size=36)


def test_hf_text_processor_pairs_continue_word_ids(tiny_vilt_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_vilt_dir))
    proc = HFTextProcessor(tok, max_length=40)
    texts, choices = ["Why is Casey sad?"], [["Riley left.", "it rains", "no", "the dog's ball"]]
    enc = proc(texts, choices)
    for k, choice in enumerate(choices[0]):
        full = f"{texts[0]} {choice}"
        spans = split_words(full)
        ids = enc["input_ids"][0, k]
        for tid, w in zip(ids.tolist(), enc["word_ids"][0, k].tolist()):
            if w < 0:
                continue
            piece = tok.convert_ids_to_tokens(tid).removeprefix("##")
            if piece == tok.unk_token:
                continue  # a word outside the tiny vocabulary
            s, e = spans[w]
            assert piece in full[s:e].lower(), (piece, full[s:e])
        assert set(enc["word_ids"][0, k].tolist()) - {-1} == set(range(len(spans)))


def test_builtin_task_student_with_word_tokenizer(tmp_path):
    tok = WordTokenizer.build(["is the cube red ?", "a dog"], max_length=16)
    tok.save(tmp_path / "vocab.json")
    proc, n = load_text_processor(tmp_path / "vocab.json", 16)
    assert n == len(tok)
    s = BuiltinTaskStudent("classify", 3, tokenizer=str(tmp_path / "vocab.json"), image_size=16,
                           patch_size=8, dim=16, depth=1, heads=2, max_text_len=16)  # fmt: skip
    px = torch.stack([s.image_transform(im) for im in _images(2)])
    out = s({"pixel_values": px, **s.text_processor(["is the cube red?", "a dog"], None)})
    assert out.logits.shape == (2, 3) and out.image_grid == (2, 2)
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        load_text_processor(tmp_path / "missing", 16)
    with pytest.raises(ValueError, match="lack"):
        s({"pixel_values": px})
