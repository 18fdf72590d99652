"""MADMixin: teachers outside the module state, the loss against hand computations, Trainer runs,
checkpoints and exact resume."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mad_distill.config import MADConfig
from mad_distill.mixin import MADMixin, MADTeacherOutputs
from mad_distill.students import BuiltinVLStudent
from mad_distill.types import MADBatch, StudentTokens

TEXTS = [
    "is the cube red?",
    "is the ball blue?",
    "how many spheres are there?",
    "what colour is the small cylinder left of the cube?",
]
CANDIDATES = ["yes", "no"]

warnings.filterwarnings("ignore", ".*does not have many workers.*")


class Student(MADMixin, L.LightningModule):
    """The built-in student with MAD; records its training losses."""

    def __init__(self, config, tok, seed=0, patch=8, mlm_vocab=None, lr=1e-2, num_classes=2):
        super().__init__()
        torch.manual_seed(seed)
        self.tok, self.lr = tok, lr
        self.model = BuiltinVLStudent(
            len(tok),
            num_classes=num_classes,
            image_size=32,
            patch_size=patch,
            dim=32,
            heads=2,
            depth=2,
            mlm_vocab_size=mlm_vocab,
            max_text_len=24,
        )
        self.configure_mad(config, student_dim=self.model.hidden_dim)
        self.losses: list[float] = []

    def forward_batch(self, batch):
        images, texts, labels = batch
        out = self.model(images, **self.tok(list(texts), device=self.device))
        mad = MADBatch(images, list(texts), labels=labels, candidates=CANDIDATES)
        return out, mad

    def training_step(self, batch, _):
        out, mad = self.forward_batch(batch)
        loss = F.cross_entropy(out.logits, batch[2]) + self.mad_loss(mad, out.tokens)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def _data(n=12):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.rand(3, 32, 32, generator=g), TEXTS[i % 4], torch.tensor(i % 2)) for i in range(n)
    ]


def _loader():
    return DataLoader(_data(), batch_size=4, shuffle=False)


def _trainer(**kw):
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    args.update(kw)
    return L.Trainer(**args)


def _batch(tok, model, n=2, texts=TEXTS):
    imgs = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    texts = list(texts[:n])
    out = model.model(imgs, **tok(texts))
    return out, MADBatch(imgs, texts, labels=torch.arange(n) % 2, candidates=CANDIDATES)


# ------------------------------------------------------------------ teachers stay outside
def test_teachers_not_in_state_dict_or_parameters(tiny_clip_spec, tiny_mlm_spec, word_tokenizer):
    cfg = MADConfig(teachers={"clip": tiny_clip_spec, "text": tiny_mlm_spec})
    m = Student(cfg, word_tokenizer)
    teacher_params = {id(p) for t in m.mad_teachers.values() for p in t.parameters()}
    assert teacher_params
    assert not teacher_params & {id(p) for p in m.parameters()}
    keys = list(m.state_dict())
    assert keys and all(k.startswith(("model.", "mad_projectors.")) for k in keys)
    assert set(m.mad_projectors) == {"image", "text"}
    assert m.mad_projectors["image"].d_teacher == m.mad_teachers["clip"].token_dim
    assert m.mad_projectors["text"].d_teacher == m.mad_teachers["text"].token_dim
    assert not any("teacher" in n for n, _ in m.named_modules())
    m.train()
    assert all(not t.training for t in m.mad_teachers.values())
    # .to()/.double() reach the teachers although they are not submodules
    m.double()
    assert all(p.dtype == torch.float64 for t in m.mad_teachers.values() for p in t.parameters())
    assert all(not p.requires_grad for t in m.mad_teachers.values() for p in t.parameters())


def test_projectors_follow_config(tiny_clip, word_tokenizer):
    m = Student(
        MADConfig(
            teachers={"clip": tiny_clip},
            select=dict(modalities=["text"]),
            feat=dict(projector="mlp"),
        ),
        word_tokenizer,
    )
    assert set(m.mad_projectors) == {"text"}
    assert m.mad_projectors["text"].kind == "mlp"
    assert m.mad_projectors["text"].d_teacher == tiny_clip.text_token_dim


# ------------------------------------------------------------------ the loss by hand
def _cos_loss(s, t):
    return 1 - F.cosine_similarity(s.float(), t.float(), dim=-1)


def test_image_loss_matches_hand_computation(tiny_clip, word_tokenizer):
    """Student grid 8x8 vs teacher 4x4: bilinear resize; relevance top-25% of 64 patches."""
    cfg = MADConfig(
        teachers={"clip": tiny_clip},
        select=dict(source="relevance", ratio=0.25, modalities=["image"]),
        weight=dict(mode="uniform"),
        kl=dict(weight=0.0),
    )
    m = Student(cfg, word_tokenizer, patch=4)
    out, batch = _batch(word_tokenizer, m)
    loss = m.mad_loss(batch, out.tokens)

    img = tiny_clip.encode_image(batch.teacher_images)
    txt = tiny_clip.encode_text(batch.texts)

    def resize(x):  # [B, 16, d] -> [B, 64, d]
        grid = x.transpose(1, 2).reshape(x.shape[0], -1, 4, 4)
        return (
            F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False)
            .flatten(2)
            .transpose(1, 2)
        )

    target, joint = resize(img.tokens), resize(img.tokens_joint)
    n_text = word_tokenizer(batch.texts)["input_ids"].shape[1]
    s_img = out.tokens.hidden[:, n_text:]
    proj = m.mad_projectors["image"](s_img)
    expect = []
    for b in range(2):
        rel = F.cosine_similarity(joint[b], txt.pooled[b][None], dim=-1)
        top = torch.topk(rel, 16).indices
        expect.append(_cos_loss(proj[b, top], target[b, top]).mean())
    torch.testing.assert_close(loss, torch.stack(expect).mean(), rtol=1e-5, atol=1e-6)
    assert m.mad_last["selected_frac"].item() == pytest.approx(0.25)


def test_text_loss_matches_hand_computation(tiny_clip, word_tokenizer):
    """Words: student pieces and CLIP BPE pieces averaged per word, all words kept."""
    cfg = MADConfig(
        teachers={"clip": tiny_clip},
        select=dict(source="attention", ratio=1.0, modalities=["text"]),
        weight=dict(mode="uniform"),
        kl=dict(weight=0.0),
    )
    m = Student(cfg, word_tokenizer)
    texts = ["what colour is the small cylinder?", "unbelievably, a cube!"]
    out, batch = _batch(word_tokenizer, m, texts=texts)
    loss = m.mad_loss(batch, out.tokens)
    t = tiny_clip.encode_text(texts)
    enc = word_tokenizer(texts)
    proj = m.mad_projectors["text"](out.tokens.hidden)
    per_b = []
    for b in range(2):
        terms = []
        for w in range(len(__import__("mad_distill.align").align.split_words(texts[b]))):
            s_pos = (enc["word_ids"][b] == w).nonzero().flatten()
            t_pos = ((t.word_ids[b] == w) & t.mask[b]).nonzero().flatten()
            if len(s_pos) and len(t_pos):
                s = proj[b, s_pos].mean(0)  # one piece per word: pooling then projecting is equal
                terms.append(_cos_loss(s, t.tokens[b, t_pos].mean(0)))
        per_b.append(torch.stack(terms).mean())
    torch.testing.assert_close(loss, torch.stack(per_b).mean(), rtol=1e-5, atol=1e-6)
    assert m.mad_last["selected_frac"].item() == 1.0


@pytest.mark.parametrize(
    "select",
    [
        dict(source="relevance"),
        dict(source="attention", k=3),
        dict(source="discrepancy"),
        dict(source="given", ratio=0.5),
        dict(source="relevance", ratio=1.0),  # selection off
    ],
)
@pytest.mark.parametrize("mode", ["gt_prob", "entropy", "correct", "uniform"])
def test_all_sources_and_weights_train(tiny_clip, word_tokenizer, select, mode):
    m = Student(
        MADConfig(teachers={"clip": tiny_clip}, select=select, weight=dict(mode=mode)),
        word_tokenizer,
    )
    out, batch = _batch(word_tokenizer, m, n=3)
    n = out.tokens.hidden.shape[1]
    batch.scores = torch.rand(3, n)
    loss = m.mad_loss(batch, out.tokens)
    assert torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    assert m.mad_projectors["image"].net.weight.grad.abs().sum() > 0
    assert m.model.patch_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_clip.parameters())
    parts = m.mad_last
    assert set(parts) == {"feat", "kl", "weight_mean", "selected_frac"}
    if mode != "correct":
        assert parts["weight_mean"].item() == pytest.approx(1.0)
    if select.get("ratio") == 1.0:
        assert parts["selected_frac"].item() == 1.0


def test_instance_kl_and_weights_by_hand(tiny_clip, word_tokenizer):
    cfg = MADConfig(
        teachers={"clip": tiny_clip},
        feat=dict(weight=0.0),
        kl=dict(weight=1.0, tau=2.0, token_level=False),
        weight=dict(mode="gt_prob", gamma=1.0),
    )
    m = Student(cfg, word_tokenizer)
    out, batch = _batch(word_tokenizer, m, n=3)
    loss = m.mad_loss(batch, out.tokens)
    z = tiny_clip.zero_shot_logits(tiny_clip.encode_image(batch.teacher_images).pooled, CANDIDATES)
    w = z.softmax(-1).gather(1, batch.labels[:, None]).squeeze(1)
    w = w / w.mean()
    kl = F.kl_div(
        F.log_softmax(out.logits / 2, -1),
        F.log_softmax(z / 2, -1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    torch.testing.assert_close(loss, 4 * (w * kl).mean(), rtol=1e-5, atol=1e-6)


def test_token_level_kl_with_mlm_teacher(tiny_clip_spec, tiny_mlm_spec, word_tokenizer):
    from mad_distill.teachers import create_teacher

    text = create_teacher(tiny_mlm_spec)
    cfg = MADConfig(
        teachers={"clip": tiny_clip_spec, "text": text},
        feat=dict(weight=0.0),
        kl=dict(weight=1.0, instance_level=False),
        select=dict(source="attention", modalities=["text"]),
    )
    m = Student(cfg, word_tokenizer, mlm_vocab=text.vocab_size)
    out, batch = _batch(word_tokenizer, m)
    loss = m.mad_loss(batch, out.tokens)
    assert loss > 0
    loss.backward()
    assert m.model.mlm_head.weight.grad.abs().sum() > 0
    # no MLM head on the student: token-level KL is not computed (and nothing else is on)
    m2 = Student(cfg, word_tokenizer)
    out2, batch2 = _batch(word_tokenizer, m2)
    assert m2.mad_loss(batch2, out2.tokens).item() == 0.0


def test_schedule_follows_global_step(tiny_clip, word_tokenizer):
    cfg = MADConfig(
        teachers={"clip": tiny_clip},
        kl=dict(weight=0.0),
        feat=dict(schedule=dict(kind="linear_warmup", warmup_steps=10)),
    )
    m = Student(cfg, word_tokenizer)
    out, batch = _batch(word_tokenizer, m)
    assert m.mad_loss(batch, out.tokens).item() == 0.0  # global_step 0: warm-up factor 0
    assert m.mad_last["feat"] > 0  # the part is still computed and logged
    cos = MADConfig(teachers={"clip": tiny_clip}, feat=dict(schedule=dict(kind="cosine")))
    m2 = Student(cos, word_tokenizer)
    with pytest.raises(ValueError, match="total_steps"):
        m2.mad_loss(batch, m2.model(batch.teacher_images, **word_tokenizer(batch.texts)).tokens)


def test_teacher_outputs_hook_can_replace_teachers(tiny_clip, word_tokenizer):
    """What issue 7's cache plugs into: precomputed outputs give the same loss."""
    cfg = MADConfig(teachers={"clip": tiny_clip})
    live = Student(cfg, word_tokenizer)
    out, batch = _batch(word_tokenizer, live)
    saved = live.mad_teacher_outputs(batch, live.mad_required_outputs())
    assert live.mad_required_outputs() == {"image", "clip_text", "zero_shot"}

    class Cached(Student):
        def mad_teacher_outputs(self, batch, required):
            assert required <= {"image", "clip_text", "text", "zero_shot"}
            return copy.deepcopy(saved)

    cached = Cached(cfg, word_tokenizer)
    cached.load_state_dict(live.state_dict())
    torch.testing.assert_close(cached.mad_loss(batch, out.tokens), live.mad_loss(batch, out.tokens))
    assert isinstance(saved, MADTeacherOutputs)


# ------------------------------------------------------------------ errors
def test_bad_inputs(tiny_clip, word_tokenizer):
    m = Student(MADConfig(teachers={"clip": tiny_clip}), word_tokenizer)
    out, batch = _batch(word_tokenizer, m)
    with pytest.raises(ValueError, match="MADBatch.candidates"):
        m.mad_loss(MADBatch(batch.teacher_images, batch.texts, labels=batch.labels), out.tokens)
    with pytest.raises(ValueError, match="teacher_images"):
        m.mad_loss(MADBatch(None, batch.texts, candidates=CANDIDATES), out.tokens)
    with pytest.raises(ValueError, match="kl.instance_level"):
        three = MADBatch(
            batch.teacher_images,
            batch.texts,
            labels=batch.labels,
            candidates=["yes", "no", "maybe"],
        )
        m.mad_loss(three, out.tokens)
    with pytest.raises(ValueError, match="MADBatch has 1 texts"):
        m.mad_loss(MADBatch(None, batch.texts[:1]), out.tokens)
    with pytest.raises(TypeError, match="MADBatch"):
        m.mad_loss({"texts": batch.texts}, out.tokens)
    t = out.tokens
    no_grid = StudentTokens(t.hidden, t.mask, t.kinds, t.word_ids, None, t.logits)
    with pytest.raises(ValueError, match="image_grid"):
        m.mad_loss(batch, no_grid)
    wrong_grid = StudentTokens(t.hidden, t.mask, t.kinds, t.word_ids, (3, 3), t.logits)
    with pytest.raises(ValueError, match="image_grid"):
        m.mad_loss(batch, wrong_grid)
    no_words = StudentTokens(t.hidden, t.mask, t.kinds, None, t.image_grid, t.logits)
    with pytest.raises(ValueError, match="word_ids"):
        m.mad_loss(batch, no_words)
    given = Student(
        MADConfig(teachers={"clip": tiny_clip}, select=dict(source="given")), word_tokenizer
    )
    with pytest.raises(ValueError, match="MADBatch.scores"):
        given.mad_loss(batch, out.tokens)


def test_bad_configuration(tiny_clip, word_tokenizer):
    class Early(MADMixin, L.LightningModule):
        def __init__(self):
            self.configure_mad(MADConfig(teachers={"clip": tiny_clip}), student_dim=8)

    with pytest.raises(RuntimeError, match=r"super\(\)\.__init__\(\)"):
        Early()

    class Bare(MADMixin, L.LightningModule):
        pass

    bare = Bare()
    with pytest.raises(RuntimeError, match="configure_mad"):
        bare.mad_loss(MADBatch(None, ["a"]), None)
    with pytest.raises(ValueError, match="student_dim"):
        bare.configure_mad(MADConfig(teachers={"clip": tiny_clip}), student_dim=0)
    with pytest.raises(ValueError, match="teacher_kwargs"):
        bare.configure_mad({"teachers": {"clip": tiny_clip}}, 8, teacher_kwargs={"text": {}})
    with pytest.raises(TypeError, match="config"):
        bare.configure_mad(["clip"], 8)
    with pytest.raises(ValueError, match="teachers"):
        bare.configure_mad({"teachers": {"image": tiny_clip}}, 8)


# ------------------------------------------------------------------ Trainer, checkpoints, resume
def test_fit_trains_student_only_and_checkpoint_has_no_teacher(
    tiny_clip_spec, word_tokenizer, tmp_path
):
    m = Student(MADConfig(teachers={"clip": tiny_clip_spec}), word_tokenizer)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    clip = m.mad_teachers["clip"]
    t_before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    trainer = _trainer(max_steps=2)
    trainer.fit(m, _loader())
    assert len(m.losses) == 2 and all(map(torch.isfinite, map(torch.tensor, m.losses)))
    after = m.state_dict()
    assert not torch.equal(before["model.patch_embed.weight"], after["model.patch_embed.weight"])
    assert not torch.equal(
        before["mad_projectors.image.net.weight"], after["mad_projectors.image.net.weight"]
    )
    for k, v in clip.model.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())
    assert trainer.callback_metrics.keys() >= {"mad/feat", "mad/kl"}

    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert set(ckpt["state_dict"]) == set(after)
    assert ckpt["mad"]["teachers"] == {"clip": clip.identity}
    assert ckpt["mad"]["config"]["teachers"] == {"clip": tiny_clip_spec}
    assert MADConfig.from_dict(ckpt["mad"]["config"]) == m.mad_config
    # round trip into a fresh module
    fresh = Student(MADConfig(teachers={"clip": tiny_clip_spec}), word_tokenizer, seed=5)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_checkpoint_with_other_teachers_is_refused(
    tiny_clip_spec, make_tiny_clip_spec, word_tokenizer, tmp_path
):
    m = Student(MADConfig(teachers={"clip": tiny_clip_spec}), word_tokenizer)
    trainer = _trainer(max_steps=1)
    trainer.fit(m, _loader())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    other_spec = make_tiny_clip_spec(tmp_path / "other_clip.pt", seed=1)
    other = Student(MADConfig(teachers={"clip": other_spec}), word_tokenizer)
    with pytest.raises(ValueError, match=r"other MAD teachers[\s\S]*clip: checkpoint"):
        _trainer(max_steps=2).fit(other, _loader(), ckpt_path=path)


def test_fresh_trainer_resume_continues_exactly(tiny_clip_spec, word_tokenizer, tmp_path):
    cfg = dict(
        teachers={"clip": tiny_clip_spec}, feat=dict(schedule=dict(kind="cosine", warmup_steps=1))
    )
    full = Student(MADConfig(**cfg), word_tokenizer)
    _trainer(max_epochs=2).fit(full, _loader())
    assert len(full.losses) == 6

    class Interrupt(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = True  # stop after epoch 1 of 2 (same schedule length)

    first = Student(MADConfig(**cfg), word_tokenizer)
    t1 = _trainer(max_epochs=2, callbacks=[Interrupt()])
    t1.fit(first, _loader())
    path = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(path)
    resumed = Student(MADConfig(**cfg), word_tokenizer, seed=123)  # different init: all restored
    t2 = _trainer(max_epochs=2)
    t2.fit(resumed, _loader(), ckpt_path=path)
    assert t2.global_step == 6
    assert first.losses + resumed.losses == full.losses  # bit-identical on CPU
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_text_teacher_without_clip(tiny_mlm_spec, word_tokenizer):
    cfg = MADConfig(
        teachers={"text": tiny_mlm_spec},
        select=dict(source="discrepancy", modalities=["text"]),
        weight=dict(mode="uniform"),
        kl=dict(instance_level=False),
    )
    m = Student(cfg, word_tokenizer)
    assert m.mad_required_outputs() == {"text"}
    assert set(m.mad_projectors) == {"text"}
    out, batch = _batch(word_tokenizer, m)
    loss = m.mad_loss(MADBatch(None, batch.texts), out.tokens)
    assert loss > 0 and 0 < m.mad_last["selected_frac"] < 1


def test_gain_weights_use_the_students_own_logits(tiny_clip, word_tokenizer):
    from mad_distill.weighting import confidence_weights

    m = Student(MADConfig(teachers={"clip": tiny_clip}, weight=dict(mode="gain")), word_tokenizer)
    out, mad = _batch(word_tokenizer, m, n=4)
    teach = m.mad_teacher_outputs(mad, m.mad_required_outputs())
    w = m._mad_weights(mad, teach, 4, torch.device("cpu"), out.tokens.logits)
    want = confidence_weights(teach.zero_shot, mad.labels, "gain", student_logits=out.logits)
    torch.testing.assert_close(w, want)
    loss = m.mad_loss(mad, out.tokens)
    assert torch.isfinite(loss)
    loss.backward()  # the weights are detached: gradients reach the student through the losses
    assert m.model.patch_embed.weight.grad is not None


def test_class_groups_compare_group_probabilities(tiny_clip, word_tokenizer):
    """With class_groups the instance KL and the gt_prob weights read group probabilities, and
    the teacher's label comes from its best group."""
    cands = ["a red cube", "a red cube that is heavy", "a blue ball"]
    cfg = MADConfig(
        teachers={"clip": tiny_clip},
        feat=dict(weight=0.0),
        kl=dict(weight=1.0, tau=2.0, token_level=False),
        weight=dict(mode="gt_prob"),
        class_groups=[0, 0, 1],
    )
    m = Student(cfg, word_tokenizer, num_classes=3)
    imgs = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    out = m.model(imgs, **word_tokenizer(TEXTS))
    labels = torch.tensor([0, 1, 2, 1])
    batch = MADBatch(imgs, list(TEXTS), labels=labels, candidates=cands)
    loss = m.mad_loss(batch, out.tokens)

    z = tiny_clip.zero_shot_logits(tiny_clip.encode_image(imgs).pooled, cands)
    pt, ps = z.softmax(-1), out.logits.softmax(-1)
    pt_g = torch.stack([pt[:, :2].sum(-1), pt[:, 2]], -1)
    w = pt_g.gather(1, torch.tensor([[0], [0], [1], [0]])).squeeze(1)
    w = w / w.mean()
    qt = (z / 2).softmax(-1)
    qs = (out.logits / 2).softmax(-1)
    qt_g = torch.stack([qt[:, :2].sum(-1), qt[:, 2]], -1)
    qs_g = torch.stack([qs[:, :2].sum(-1), qs[:, 2]], -1)
    kl = (qt_g * (qt_g.log() - qs_g.log())).sum(-1)
    torch.testing.assert_close(loss, 4 * (w * kl).mean(), rtol=1e-5, atol=1e-6)
    # the ungrouped loss differs: the teacher's split inside group 0 is no longer distilled
    m.mad_config.class_groups = None
    assert not torch.allclose(m.mad_loss(batch, out.tokens), loss)
    assert ps.shape == (4, 3)

    m.mad_config.class_groups = (0, 0, 1)
    got = m.mad_teacher_labels(MADBatch(imgs, list(TEXTS), candidates=cands))
    best = (pt_g.argmax(-1) == 1).long() * 2 + (pt_g.argmax(-1) == 0).long() * pt[:, :2].argmax(-1)
    assert got.tolist() == best.tolist()


@pytest.mark.parametrize("groups", [None, (0, 1)])
def test_teacher_labels_weight_by_the_teachers_own_prediction(tiny_clip, word_tokenizer, groups):
    """mad_loss(teacher_labels=True) equals mad_loss on the batch labelled by
    mad_teacher_labels, never reads batch.labels, and works without any."""
    cfg = MADConfig(teachers={"clip": tiny_clip}, weight=dict(mode="gt_prob"), class_groups=groups)
    m = Student(cfg, word_tokenizer)
    out, mad = _batch(word_tokenizer, m, n=4)
    unlabelled = dataclasses.replace(mad, labels=None)
    got = m.mad_loss(unlabelled, out.tokens, teacher_labels=True)
    want = m.mad_loss(dataclasses.replace(mad, labels=m.mad_teacher_labels(unlabelled)), out.tokens)
    torch.testing.assert_close(got, want)
    scrambled = dataclasses.replace(mad, labels=1 - mad.labels)
    torch.testing.assert_close(m.mad_loss(scrambled, out.tokens, teacher_labels=True), got)
    with pytest.raises(ValueError, match="labels are required"):
        m.mad_loss(unlabelled, out.tokens)


# ------------------------------------------------------------------ no host sync on CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("source", ["relevance", "attention", "discrepancy"])
def test_mad_step_makes_no_host_sync_on_cuda(tiny_clip_spec, word_tokenizer, source):
    """A MAD step (teacher forward, selection, weighting, losses, backward) never makes the host
    wait for the GPU: input checks are device-side asserts, host tensors travel pinned and
    non-blocking, image tokens are gathered rather than boolean-indexed. Each such wait would
    cost a launch-bound step its CPU/GPU overlap (benchmarks/training_overhead.py records them)."""
    from mad_distill.teachers import create_teacher

    teacher = create_teacher(tiny_clip_spec, device="cuda")
    cfg = MADConfig(teachers={"clip": teacher}, select=dict(source=source))
    m = Student(cfg, word_tokenizer).cuda()
    imgs = torch.rand(3, 3, 32, 32, device="cuda")
    texts = TEXTS[:3]
    enc = word_tokenizer(texts, device="cuda")
    labels = torch.arange(3, device="cuda") % 2

    def step():
        out = m.model(imgs, **enc)
        mad = MADBatch(imgs, texts, labels=labels, candidates=CANDIDATES)
        m.mad_loss(mad, out.tokens).backward()

    step()  # lazy initialisation may wait once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
