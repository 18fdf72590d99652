"""Mixed precision: bf16 autocast through Lightning's ``precision="bf16-mixed"`` on CPU.

The student runs in bf16; the teachers run outside autocast (their outputs are fp32 targets, as
from the cache), and every distillation loss is computed and returned in fp32.
"""

from __future__ import annotations

import pytest
import torch
from scale_helpers import TinyMAD, ToyData, collate, mad_batches, trainer
from torch.utils.data import DataLoader

from mad_distill.cache import build_cache, preprocessing_record
from mad_distill.config import MADConfig
from mad_distill.losses import feature_distill_loss, instance_kl_loss, token_kl_loss

DATA = ToyData(8)


def _cfg(spec, **kw):
    return MADConfig(teachers={"clip": spec}, **kw)


def _batch():
    return next(iter(DataLoader(DATA, batch_size=8, collate_fn=collate)))


def test_teacher_outputs_stay_fp32_under_autocast(tiny_clip, word_tokenizer):
    m = TinyMAD(_cfg(tiny_clip), word_tokenizer)
    mad = _batch()["mad"]
    req = m.mad_required_outputs()
    ref = m.mad_teacher_outputs(mad, req)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.mad_teacher_outputs(mad, req)
    for a, b in ((out.image.tokens, ref.image.tokens), (out.zero_shot, ref.zero_shot)):
        assert a.dtype == torch.float32
        assert torch.equal(a, b)  # not rounded through bf16: CLIP's logit scale amplifies it


def test_mad_loss_under_autocast_is_fp32_and_close(tiny_clip, word_tokenizer):
    m = TinyMAD(_cfg(tiny_clip), word_tokenizer)
    batch = _batch()
    ref = m.step(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.model(batch["images"], **word_tokenizer(batch["texts"]))
        assert out.logits.dtype == torch.bfloat16  # the student really runs in bf16
        loss = m.mad_loss(batch["mad"], out.tokens)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref_mad = ref - torch.nn.functional.cross_entropy(
        m.model(batch["images"], **word_tokenizer(batch["texts"])).logits, batch["labels"]
    )
    torch.testing.assert_close(loss, ref_mad.detach(), rtol=3e-2, atol=1e-3)
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_losses_compute_in_fp32_from_half_inputs():
    """A bf16/fp16 input gives exactly the loss of its fp32 upcast (no half-precision math)."""
    g = torch.Generator().manual_seed(0)
    b, n, c, d = 3, 5, 7, 16
    idx = torch.tensor([[0, 2, -1], [1, 4, 3], [-1, -1, -1]])
    w = torch.tensor([0.5, 1.5, 1.0])
    s_logits = torch.randn(b, n, c, generator=g) * 60  # large logits: exp() overflows in fp16
    t_logits = torch.randn(b, n, c, generator=g) * 60
    s_feat, t_feat = torch.randn(b, n, d, generator=g), torch.randn(b, n, d, generator=g)
    for half in (torch.bfloat16, torch.float16):
        sl, tl = s_logits.to(half), t_logits.to(half)
        kl = token_kl_loss(sl, tl, idx, w, 2.0, backend="reference")
        assert kl.dtype == torch.float32 and torch.isfinite(kl)
        torch.testing.assert_close(
            kl, token_kl_loss(sl.float(), tl.float(), idx, w, 2.0, backend="reference")
        )
        inst = instance_kl_loss(sl[:, 0], tl[:, 0], w, 2.0, backend="reference")
        assert inst.dtype == torch.float32 and torch.isfinite(inst)
        sf, tf = s_feat.to(half), t_feat.to(half)
        fl = feature_distill_loss(sf, tf, idx, w, "cosine", backend="reference")
        assert fl.dtype == torch.float32
        torch.testing.assert_close(
            fl, feature_distill_loss(sf.float(), tf.float(), idx, w, "cosine", backend="reference")
        )


@pytest.mark.parametrize("use_cache", [False, True])
def test_trainer_bf16_mixed(tiny_clip, word_tokenizer, tmp_path, use_cache):
    """Lightning bf16-mixed: finite fp32 losses close to the fp32 run, fp32 master weights."""
    cfg = _cfg(tiny_clip, select=dict(source="relevance"))
    ref = TinyMAD(cfg, word_tokenizer)
    half = TinyMAD(cfg, word_tokenizer)
    if use_cache:
        cache = build_cache(
            tmp_path / "c", half, mad_batches(DATA, 4), dataset="toy", split="train",
            preprocessing=preprocessing_record(half), dtype="bf16",
        )  # fmt: skip
        half.use_mad_cache(cache)
    loader = lambda: DataLoader(DATA, batch_size=4, collate_fn=collate)  # noqa: E731
    trainer(max_steps=3).fit(ref, loader())
    t = trainer(max_steps=3, precision="bf16-mixed")
    t.fit(half, loader())
    assert all(torch.isfinite(torch.tensor(half.losses)))
    torch.testing.assert_close(
        torch.tensor(half.losses), torch.tensor(ref.losses), rtol=5e-2, atol=5e-2
    )
    assert all(p.dtype == torch.float32 for p in half.parameters())
    assert torch.isfinite(t.callback_metrics["mad/feat"])
