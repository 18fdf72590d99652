from __future__ import annotations

import pytest
import torch

from mad_distill.vlkd import VLKDBatch, VLKDConfig, VLKDModule, ZeroShotVQA
from mad_distill.vlkd.zero_shot import normalize_answer, vqa_accuracy


def test_prompts_and_template_errors(bart_dir, clip_teacher):
    m = VLKDModule(bart_dir, clip_teacher)
    zs = ZeroShotVQA.from_module(m)
    enc, dec = zs.prompts(" what colour is the circle? ")
    assert enc == "question: what colour is the circle? answer: <mask>"
    assert dec == "question: what colour is the circle? answer:"
    with pytest.raises(ValueError, match="question is empty"):
        zs.prompts(" ")
    for bad in ["question: {question}", "{mask} {question}", "{question} {mask} {mask}"]:
        with pytest.raises(ValueError, match="template"):
            ZeroShotVQA(m.student, m.tokenizer, template=bad)
    with pytest.raises(ValueError, match="num_beams"):
        ZeroShotVQA(m.student, m.tokenizer, num_beams=0)


@pytest.mark.parametrize("beams", [1, 3])
def test_predict_returns_strings(bart_dir, clip_teacher, images, beams):
    m = VLKDModule(bart_dir, clip_teacher)
    zs = ZeroShotVQA.from_module(m, num_beams=beams, max_new_tokens=4)
    qs = ["what colour is the circle?", "how many squares are there?", "what is left?", "hi"]
    out = zs.predict(qs, images=images)
    assert len(out) == 4 and all(isinstance(a, str) for a in out)
    emb = clip_teacher.encode_image(images).pooled
    assert zs.predict(qs, image_embeds=emb) == out  # same as through the teacher
    assert m.student.training  # predict restores the mode
    text_only = ZeroShotVQA.from_module(m, use_image=False)
    assert len(text_only.predict(qs)) == 4
    with pytest.raises(ValueError, match="images or image_embeds"):
        zs.predict(qs)
    with pytest.raises(ValueError, match="B = 4"):
        zs.predict(qs, image_embeds=emb[:2])


@pytest.mark.parametrize("prefix_at", ["encoder_output", "encoder_input"])
def test_distilled_prefix_carries_the_answer(bart_dir, clip_teacher, prefix_at):
    """End to end: infilling on captions whose answer only the image tells; afterwards the
    predictor answers from the image prefix, and a text-only prompt cannot."""
    torch.manual_seed(0)
    colours = ["red", "blue", "green", "yellow"]
    emb = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    caps = [f"question: what colour is the circle? answer: {c}" for c in colours]
    cfg = VLKDConfig(
        weights={"icti": 1.0}, lr=3e-3, mask_ratio=0.3, prefix_len=2, prefix_at=prefix_at
    )
    m = VLKDModule(bart_dir, clip_teacher, config=cfg)
    opt = m.configure_optimizers()
    batch = VLKDBatch(caps, image_embeds=emb, text_embeds=torch.zeros(4, 16))
    for step in range(150):
        opt.zero_grad()
        m.compute_losses(batch, torch.Generator().manual_seed(step))["loss"].backward()
        opt.step()
    zs = ZeroShotVQA.from_module(m, max_new_tokens=4)
    pred = zs.predict(["what colour is the circle?"] * 4, image_embeds=emb)
    assert vqa_accuracy(pred, colours) == 1.0, pred
    blind = ZeroShotVQA.from_module(m, use_image=False).predict(["what colour is the circle?"] * 4)
    assert vqa_accuracy(blind, colours) <= 0.25


def test_normalize_and_accuracy():
    assert normalize_answer("The Red, circle!") == "red circle"
    assert normalize_answer("Two") == "2"
    assert vqa_accuracy(["red", "Two"], ["red", "2"]) == 1.0
    assert vqa_accuracy(["red"], [["red", "red", "blue"]]) == pytest.approx(2 / 3)
    assert vqa_accuracy(["red"], [{"red": 0.6, "blue": 1.0}]) == pytest.approx(0.6)
    assert vqa_accuracy(["green"], [{"red": 1.0}]) == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1"):
        vqa_accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        vqa_accuracy([], [])
