"""OpenCLIPTeacher runs a causal text tower on the longest text only, with unchanged outputs.

The references are open_clip's own full-context forward (``model.encode_text`` on the padded ids,
``ln_final``'s output hooked there) and the teacher's full-context fallback path. Running fewer
positions changes the order of float32 reductions (softmax and matmul sums over fewer keys), so
"equal" is ``torch.testing.assert_close``'s fp32 tolerance; a wrong mask, positional embedding
or pooled position differs by orders of magnitude more.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mad_distill.teachers import OpenCLIPTeacher

# unequal lengths (padding inside the run prefix), a one-word text, an empty text
TEXTS = ["a photo of a dog on the beach", "two cats", "x", "", "What's the man's name?"]
LONG = "a very long caption " * 10  # longer than the tiny model's context of 16


def _full_context(teacher: OpenCLIPTeacher, texts: list[str]) -> dict[str, torch.Tensor]:
    """open_clip's own encode_text over the whole context, with the inputs our outputs need."""
    model = teacher.model
    seen: dict = {}
    handles = [
        model.ln_final.register_forward_hook(lambda _m, _a, out: seen.__setitem__("ln", out)),
        model.transformer.resblocks[-1].register_forward_pre_hook(
            lambda _m, args, kwargs: seen.update(x=args[0], mask=kwargs.get("attn_mask")),
            with_kwargs=True,
        ),
    ]
    try:
        with torch.no_grad():
            ids = teacher.tokenizer(texts)
            pooled = model.encode_text(ids, normalize=True)
    finally:
        for h in handles:
            h.remove()
    return {"ids": ids, "pooled": pooled, **seen}


class _Count:
    """Record the sequence length the first text block sees."""

    def __init__(self, block: nn.Module) -> None:
        self.lengths: list[int] = []
        self._h = block.register_forward_pre_hook(
            lambda _m, args: self.lengths.append(args[0].shape[1])
        )

    def remove(self) -> None:
        self._h.remove()


def test_causal_tower_runs_a_prefix(clip_teacher):
    assert clip_teacher._parts.no_prefix_reason is None
    prompts = ["a dog", "a photo of a cat"]
    ids, mask, _ = clip_teacher.tokenize(TEXTS)
    count = _Count(clip_teacher.model.transformer.resblocks[0])
    try:
        out = clip_teacher.encode_text(TEXTS)
        clip_teacher.encode_prompts(prompts)
    finally:
        count.remove()
    t = int(mask.sum(1).max())
    assert out.tokens.shape[1] == t < clip_teacher.context_length
    # encode_text runs the longest text; prompts run up to the last EOT (5 words + SOT + EOT)
    assert int(clip_teacher.tokenizer(prompts).argmax(-1).max()) + 1 == 7
    assert count.lengths == [t, 7]


@pytest.mark.parametrize("texts", [TEXTS, [LONG, "a dog"], ["", ""]])
def test_encode_text_equals_full_context(clip_teacher, texts):
    out = clip_teacher.encode_text(texts)
    ref = _full_context(clip_teacher, texts)
    t = out.mask.shape[1]
    torch.testing.assert_close(out.pooled, ref["pooled"])
    torch.testing.assert_close(out.tokens, ref["ln"][:, :t])
    proj = clip_teacher.model.text_projection
    torch.testing.assert_close(out.tokens_joint, ref["ln"][:, :t] @ proj)
    # attention of the EOT query over the full context (keys after EOT get 0 under the mask)
    block = clip_teacher.model.transformer.resblocks[-1]
    with torch.no_grad():
        h = block.ln_1(ref["x"])
        _, full = block.attn(h, h, h, need_weights=True, attn_mask=ref["mask"])
    eot = ref["ids"].argmax(-1)
    row = full[torch.arange(len(texts)), eot]
    torch.testing.assert_close(out.attention, row[:, :t])
    assert float(row[:, t:].abs().sum()) == 0.0  # nothing past the run prefix was attended


def test_prefix_and_fallback_paths_agree(clip_teacher, monkeypatch):
    texts = [*TEXTS, LONG]
    fast = clip_teacher.encode_text(texts)
    prompts = ["yes", "no", "a red cube left of a sphere", LONG]
    fast_prompts = clip_teacher.encode_prompts(prompts)
    monkeypatch.setattr(clip_teacher._parts, "no_prefix_reason", "forced by the test")
    full = clip_teacher.encode_text(texts)
    for name in ("tokens", "tokens_joint", "attention", "pooled"):
        torch.testing.assert_close(getattr(fast, name), getattr(full, name), msg=name)
    for name in ("mask", "word_ids"):
        assert torch.equal(getattr(fast, name), getattr(full, name)), name
    torch.testing.assert_close(fast_prompts, clip_teacher.encode_prompts(prompts))


def test_zero_shot_per_instance_equals_full_context(clip_teacher):
    pooled = torch.nn.functional.normalize(torch.randn(2, clip_teacher.embed_dim), dim=-1)
    cands = [["yes", "no", "a photo of a cat"], [LONG, "no", "maybe"]]
    got = clip_teacher.zero_shot_logits(pooled, cands)
    model = clip_teacher.model
    with torch.no_grad():
        ref = [model.encode_text(clip_teacher.tokenizer(c), normalize=True) for c in cands]
    want = torch.stack([pooled[i] @ ref[i].T for i in range(2)]) * model.logit_scale.exp()
    torch.testing.assert_close(got, want)


def _tiny(custom_text: bool = False, **text_cfg) -> nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    vision = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    torch.manual_seed(0)
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(16, vision_cfg=vision, text_cfg={**text, **text_cfg}).eval()


def test_custom_text_tower_runs_a_prefix():
    teacher = OpenCLIPTeacher(_tiny(custom_text=True), name="tiny-custom")
    assert teacher._parts.no_prefix_reason is None
    out = teacher.encode_text(TEXTS)
    with torch.no_grad():
        ref = teacher.model.encode_text(teacher.tokenizer(TEXTS), normalize=True)
    torch.testing.assert_close(out.pooled, ref)
    assert out.tokens.shape[1] < teacher.context_length


@pytest.mark.parametrize(
    ("text_cfg", "reason"),
    [
        ({"no_causal_mask": True}, "no causal mask"),
        ({"pool_type": "last"}, "pool_type 'last'"),
        ({"embed_cls": True}, "class token"),
    ],
)
def test_full_context_where_a_prefix_is_not_exact(text_cfg, reason):
    custom = "embed_cls" in text_cfg  # CLIP has no class-token text tower
    teacher = OpenCLIPTeacher(_tiny(custom_text=custom, **text_cfg), name="tiny")
    assert reason in teacher._parts.no_prefix_reason
    count = _Count(teacher._parts.resblocks[0])
    try:
        out = teacher.encode_text(TEXTS)
    finally:
        count.remove()
    assert count.lengths == [teacher.context_length + int(custom)]
    with torch.no_grad():
        ref = teacher.model.encode_text(teacher.tokenizer(TEXTS), normalize=True)
    torch.testing.assert_close(out.pooled, ref)


def test_a_changed_mask_turns_the_prefix_off():
    model = _tiny()
    model.attn_mask = torch.zeros_like(model.attn_mask)  # bidirectional in effect
    assert "not causal" in OpenCLIPTeacher(model)._parts.no_prefix_reason
