"""OpenCLIPTeacher on a tiny open_clip model loaded from disk through create_teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mad_distill.align import split_words
from mad_distill.teachers import OpenCLIPTeacher, Teacher, create_teacher
from mad_distill.teachers.clip import simple_tokenizer_word_ids
from mad_distill.types import TeacherImageOutput, TeacherTextOutput

AWKWARD = [
    "Hello, world!",
    "An unbelievably-hyphenated surfboard.",
    "  spaces   everywhere\tand\nnewlines  ",
    "Café naïve façade",
    "",
    "What's the man's name?",
    "Tom &amp; Jerry",
    "!!!???",
]


def _images(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def capture_last_block():
    """Record the last block's input and mask with our own hook (independent of the teacher)."""

    def attach(block: nn.Module) -> tuple[dict, object]:
        seen: dict = {}

        def pre(_m, args, kwargs):
            seen["x"] = args[0]
            seen["mask"] = kwargs.get("attn_mask")

        return seen, block.register_forward_pre_hook(pre, with_kwargs=True)

    return attach


def _reference_attention(block: nn.Module, x: torch.Tensor, mask) -> torch.Tensor:
    """Full [B, L, L] attention from nn.MultiheadAttention itself (need_weights=True)."""
    h = block.ln_1(x)
    _, w = block.attn(h, h, h, need_weights=True, average_attn_weights=True, attn_mask=mask)
    return w


def test_loaded_weights_match_saved(clip_teacher, tiny_clip):
    assert isinstance(clip_teacher, OpenCLIPTeacher)
    got = clip_teacher.model.state_dict()
    for k, v in tiny_clip.state_dict.items():
        assert torch.equal(got[k], v), k


def test_safetensors_checkpoint_gives_same_teacher(clip_teacher, tiny_clip):
    other = create_teacher(f"open_clip:{tiny_clip.name}@{tiny_clip.safetensors}")
    assert other.identity == clip_teacher.identity
    assert clip_teacher.identity.startswith(f"open_clip:{tiny_clip.name}#")


def test_identity_differs_for_other_weights(clip_teacher, tiny_clip):
    import open_clip

    torch.manual_seed(123)
    other = OpenCLIPTeacher(open_clip.create_model(tiny_clip.name), name=tiny_clip.name)
    assert other.identity != clip_teacher.identity


def test_encode_image_shapes_and_pooled(clip_teacher):
    images = _images()
    out = clip_teacher.encode_image(images)
    assert isinstance(out, TeacherImageOutput)
    assert out.grid == (4, 4)
    assert out.tokens.shape == (2, 16, 64) and clip_teacher.token_dim == 64
    assert out.pooled.shape == (2, 32) and clip_teacher.embed_dim == 32
    assert out.tokens_joint.shape == (2, 16, 32)
    assert out.attention.shape == (2, 16)
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(2))
    ref = clip_teacher.model.encode_image(images, normalize=True)
    torch.testing.assert_close(out.pooled, ref)
    # tokens are what open_clip itself returns as patch tokens
    visual = clip_teacher.model.visual
    visual.output_tokens = True
    try:
        _, ref_tokens = visual(images)
    finally:
        visual.output_tokens = False
    torch.testing.assert_close(out.tokens, ref_tokens)
    torch.testing.assert_close(out.tokens_joint, ref_tokens @ visual.proj)


def test_image_attention_matches_multihead_attention(clip_teacher, capture_last_block):
    images = _images(3)
    block = clip_teacher.model.visual.transformer.resblocks[-1]
    seen, handle = capture_last_block(block)
    try:
        out = clip_teacher.encode_image(images)
    finally:
        handle.remove()
    with torch.no_grad():
        full = _reference_attention(block, seen["x"], seen["mask"])  # [B, 1+P, 1+P]
    torch.testing.assert_close(full.sum(-1), torch.ones(3, 17))  # rows over CLS + patches
    torch.testing.assert_close(out.attention, full[:, 0, 1:])  # CLS row, CLS column dropped
    # documented: not renormalised, patches get 1 - (CLS -> CLS)
    torch.testing.assert_close(out.attention.sum(-1), 1 - full[:, 0, 0])


def test_text_attention_matches_multihead_attention(clip_teacher, capture_last_block):
    texts = ["a photo of a dog", "two cats", "x"]
    block = clip_teacher.model.transformer.resblocks[-1]
    seen, handle = capture_last_block(block)
    try:
        out = clip_teacher.encode_text(texts)
    finally:
        handle.remove()
    with torch.no_grad():
        full = _reference_attention(block, seen["x"], seen["mask"])  # [B, 16, 16], causal
    ids, mask, _ = clip_teacher.tokenize(texts)
    eot = ids.argmax(-1)
    t = out.mask.shape[1]
    ref = full[torch.arange(3), eot][:, :t]
    torch.testing.assert_close(out.attention, ref)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3))  # causal: nothing after EOT
    assert bool((out.attention[~out.mask] == 0).all())


def test_encode_text_shapes_pooled_and_joint(clip_teacher):
    texts = ["a photo of a dog", "A cat, sitting."]
    out = clip_teacher.encode_text(texts)
    assert isinstance(out, TeacherTextOutput)
    ids, mask, wids = clip_teacher.tokenize(texts)
    t = int(mask.sum(1).max())
    assert out.tokens.shape == (2, t, 64) and clip_teacher.text_token_dim == 64
    assert out.tokens_joint.shape == (2, t, 32)
    assert out.mask.dtype == torch.bool and torch.equal(out.mask, mask[:, :t])
    assert torch.equal(out.word_ids, wids[:, :t])
    ref = clip_teacher.model.encode_text(clip_teacher.tokenizer(texts), normalize=True)
    torch.testing.assert_close(out.pooled, ref)
    # the pooled (EOT) token's joint-space feature is the pooled embedding
    eot = ids.argmax(-1)
    joint_eot = F.normalize(out.tokens_joint[torch.arange(2), eot], dim=-1)
    torch.testing.assert_close(joint_eot, out.pooled)


@pytest.mark.parametrize("text", AWKWARD)
def test_simple_tokenizer_ids_and_words(clip_teacher, text):
    tok = clip_teacher.tokenizer
    ids, wids = simple_tokenizer_word_ids(tok, text)
    assert len(ids) == len(wids)
    words = split_words(text)
    assert all(-1 <= w < len(words) for w in wids)
    assert wids == sorted(wids)  # pieces arrive in word order
    if text != "Tom &amp; Jerry":  # cleaning keeps the words: exactly the tokenizer's own ids
        assert ids == tok.encode(text)
    # CLIP's regex keeps "'s" and runs of punctuation in one token, split_words does not
    if "'" not in text and "!!" not in text:
        for w, (s, e) in enumerate(words):
            pieces = [tok.decoder[i] for i, wi in zip(ids, wids) if wi == w]
            decoded = bytearray(tok.byte_decoder[c] for c in "".join(pieces).replace("</w>", ""))
            assert decoded.decode("utf-8") == text[s:e].lower(), (w, pieces)


def test_word_ids_known_cases(clip_teacher):
    _, wids = simple_tokenizer_word_ids(clip_teacher.tokenizer, "Hello, world!")
    assert wids == [0, 1, 2, 3]
    ids, wids = simple_tokenizer_word_ids(clip_teacher.tokenizer, "What's up")
    # pieces what / 's / up; "'s" belongs to the word of its first character ("'")
    assert wids == [0, 1, 3]
    ids, wids = simple_tokenizer_word_ids(clip_teacher.tokenizer, "unbelievably")
    assert len(ids) >= 1 and set(wids) == {0}


def test_tokenize_matches_open_clip_and_truncates(clip_teacher):
    texts = AWKWARD[:6] + ["word " * 40]
    ids, mask, wids = clip_teacher.tokenize(texts)
    assert ids.shape == (len(texts), 16)
    assert torch.equal(ids, clip_teacher.tokenizer(texts))  # same ids as open_clip's tokenizer
    assert torch.equal(mask, torch.arange(16) <= ids.argmax(-1, keepdim=True))
    assert bool((wids[~mask] == -1).all()) and bool((wids[:, 0] == -1).all())
    long_row = wids[-1]
    assert long_row[-1] == -1 and long_row[1:-1].tolist() == list(range(14))
    empty = texts.index("")
    assert mask[empty].sum() == 2 and bool((wids[empty] == -1).all())


def test_hf_tokenizer_open_clip_model(tiny_clip_hftok):
    from mad_distill.teachers.clip import OpenCLIPTeacher

    teacher = OpenCLIPTeacher.from_pretrained("mad-test-tiny-vit-hftok", str(tiny_clip_hftok))
    texts = ["Hello, world!", "An unbelievably-hyphenated surfboard.", ""]
    ids, mask, wids = teacher.tokenize(texts)
    assert torch.equal(ids, teacher.tokenizer(texts))
    hf = teacher.tokenizer.tokenizer
    for i, text in enumerate(texts):
        words = split_words(text)
        for w, (s, e) in enumerate(words):
            pieces = hf.convert_ids_to_tokens(ids[i][wids[i] == w].tolist())
            assert "".join(p.removeprefix("##") for p in pieces) == text[s:e].lower()
    out = teacher.encode_text(texts)
    assert out.tokens.shape[:2] == out.mask.shape == out.word_ids.shape
    ref = teacher.model.encode_text(teacher.tokenizer(texts), normalize=True)
    torch.testing.assert_close(out.pooled, ref)


def test_zero_shot_shared_and_per_instance_agree(clip_teacher):
    pooled = clip_teacher.encode_image(_images(3)).pooled
    prompts = ["a photo of a dog", "a photo of a cat", "a red car", "the sea"]
    shared = clip_teacher.zero_shot_logits(pooled, prompts)
    assert shared.shape == (3, 4)
    per = clip_teacher.zero_shot_logits(pooled, [prompts] * 3)
    torch.testing.assert_close(shared, per)
    # against the definition: logit_scale * cosine
    text = clip_teacher.model.encode_text(clip_teacher.tokenizer(prompts), normalize=True)
    ref = clip_teacher.model.logit_scale.exp() * pooled @ text.T
    torch.testing.assert_close(shared, ref)
    # per-instance lists in another order give the permuted logits
    perm = [[prompts[j] for j in (3, 1, 0, 2)], prompts, prompts[::-1]]
    got = clip_teacher.zero_shot_logits(pooled, perm)
    torch.testing.assert_close(got[0], shared[0, [3, 1, 0, 2]])
    torch.testing.assert_close(got[2], shared[2].flip(0))
    # shared prompts are encoded once
    key = next(k for k in clip_teacher._prompt_cache if k[0] == tuple(prompts))
    assert clip_teacher._prompt_cache[key] is clip_teacher._shared_prompts(prompts)


def test_zero_shot_bad_inputs(clip_teacher):
    pooled = torch.randn(2, 32)
    with pytest.raises(ValueError, match="one list per image"):
        clip_teacher.zero_shot_logits(pooled, [["a", "b"]] * 3)
    with pytest.raises(ValueError, match="same non-zero number"):
        clip_teacher.zero_shot_logits(pooled, [["a", "b"], ["a"]])
    with pytest.raises(ValueError, match="non-empty"):
        clip_teacher.zero_shot_logits(pooled, [])
    with pytest.raises(ValueError, match="width"):
        clip_teacher.zero_shot_logits(torch.randn(2, 7), ["a"])
    with pytest.raises(TypeError):
        clip_teacher.zero_shot_logits(pooled, ["a", ["b"]])


def test_bad_images_and_texts(clip_teacher):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        clip_teacher.encode_image(torch.randn(2, 32, 32))
    with pytest.raises(ValueError, match="preprocess"):
        clip_teacher.encode_image(torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match="list of strings"):
        clip_teacher.encode_text("a single string")
    with pytest.raises(TypeError, match="only strings"):
        clip_teacher.encode_text(["ok", 3])


def test_preprocess_is_open_clip_eval_transform(clip_teacher):
    from PIL import Image

    x = clip_teacher.preprocess(Image.new("RGB", (50, 40), color=(200, 10, 10)))
    assert x.shape == (3, 32, 32)
    assert clip_teacher.encode_image(x[None]).tokens.shape == (1, 16, 64)


def test_frozen_eval_no_grad(clip_teacher):
    assert isinstance(clip_teacher, Teacher)
    assert not any(p.requires_grad for p in clip_teacher.parameters())
    clip_teacher.train()
    assert not clip_teacher.training and not any(m.training for m in clip_teacher.modules())
    images = _images().requires_grad_(True)
    out = clip_teacher.encode_image(images)
    assert not out.tokens.requires_grad and not out.pooled.requires_grad
    assert not clip_teacher.encode_text(["a dog"]).tokens.requires_grad


def test_non_vit_tower_raises_clearly():
    import open_clip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    model = open_clip.CLIP(**cfg)
    teacher = OpenCLIPTeacher(model, name="tiny-rn")
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):
        teacher.encode_image(torch.randn(1, 3, 32, 32))
    assert teacher.encode_text(["still works"]).pooled.shape == (1, 32)


def test_to_moves_and_casts(tiny_clip):
    teacher = create_teacher(f"open_clip:{tiny_clip.name}@{tiny_clip.pt}")
    before = teacher.identity
    teacher.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in teacher.parameters())
    out = teacher.encode_image(_images())
    assert out.tokens.dtype == torch.float64
    assert teacher.identity != before  # precision is part of what a cache must match
    assert teacher.zero_shot_logits(out.pooled, ["a", "b"]).shape == (2, 2)


_ALPHABET = "abcXYZé ñ,.!?'-&;0123 \t"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet=_ALPHABET, max_size=30))
def test_simple_tokenizer_word_ids_property(clip_teacher, text):
    tok = clip_teacher.tokenizer
    ids, wids = simple_tokenizer_word_ids(tok, text)
    words = split_words(text)
    assert len(ids) == len(wids)
    assert wids == sorted(wids) and all(-1 <= w < len(words) for w in wids)
    if "&" not in text:  # html entities change the words: the word-by-word path is taken
        assert ids == tok.encode(text)
    # every piece that carries a word id covers text from that word (lower-cased)
    for i, w in zip(ids, wids):
        if w >= 0:
            piece = bytearray(tok.byte_decoder[c] for c in tok.decoder[i].replace("</w>", ""))
            s, e = words[w]
            head = piece.decode("utf-8", errors="ignore")[:1]
            assert head == "" or head in text[s:e].lower(), (text, w, piece)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_outputs_and_identity(tiny_clip, clip_teacher):
    teacher = create_teacher(f"open_clip:{tiny_clip.name}@{tiny_clip.pt}", device="cuda")
    assert teacher.identity == clip_teacher.identity  # the fingerprint is device-independent
    out = teacher.encode_image(_images())
    assert out.tokens.is_cuda and out.attention.is_cuda
    text = teacher.encode_text(["a dog", "two cats"])
    assert text.tokens.is_cuda and text.word_ids.is_cuda and text.mask.is_cuda
    logits = teacher.zero_shot_logits(out.pooled, ["a dog", "a cat"])
    ref = clip_teacher.zero_shot_logits(
        clip_teacher.encode_image(_images()).pooled, ["a dog", "a cat"]
    )
    torch.testing.assert_close(logits.cpu(), ref, atol=1e-3, rtol=1e-3)
