from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mad_distill.vlkd import VLKDBatch, VLKDConfig, VLKDModule, collate_pairs

CAPTIONS = [
    "a small red circle left of a large blue square",
    "a large green triangle above a small yellow cross",
    "a purple square below a cyan circle",
    "two red crosses and one green circle",
]


def _batch(images, n=4):
    return VLKDBatch(captions=CAPTIONS[:n], images=images[:n])


def test_builds_from_local_folder_teacher_outside_state(bart_dir, clip_teacher):
    m = VLKDModule(bart_dir, clip_teacher)
    assert m.embed_dim == 16 and m.text_proj.out_features == 16
    assert m.prefix(torch.randn(2, 16)).shape == (2, 4, m.student.config.d_model)
    keys = m.state_dict().keys()
    assert any(k.startswith("student.") for k in keys)
    assert not any("model.visual" in k or k.startswith("_teacher") for k in keys)
    ids = {id(p) for p in m.parameters()}
    assert not any(id(p) in ids for p in clip_teacher.parameters())
    m.train()
    assert not clip_teacher.training
    assert all(not p.requires_grad for p in clip_teacher.parameters())


def test_losses_and_gradients_reach_student_only(bart_dir, clip_teacher, images):
    m = VLKDModule(bart_dir, clip_teacher)
    losses = m.compute_losses(_batch(images))
    assert set(losses) == {"ttdm", "itc", "icti", "loss"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert torch.allclose(losses["loss"], losses["ttdm"] + losses["itc"] + losses["icti"])
    losses["loss"].backward()
    assert m.student.model.encoder.layers[0].fc1.weight.grad is not None
    assert m.student.model.decoder.layers[0].fc1.weight.grad is not None
    assert m.text_proj.weight.grad is not None and m.logit_scale.grad is not None
    assert all(p.grad is not None for p in m.prefix.parameters())
    assert all(p.grad is None for p in clip_teacher.parameters())


def test_weights_select_objectives(bart_dir, clip_teacher, images):
    cfg = VLKDConfig(weights={"ttdm": 0.5, "icti": 2.0})
    m = VLKDModule(bart_dir, clip_teacher, config=cfg)
    losses = m.compute_losses(_batch(images))
    assert set(losses) == {"ttdm", "icti", "loss"}
    assert torch.allclose(losses["loss"], 0.5 * losses["ttdm"] + 2.0 * losses["icti"])


@pytest.mark.parametrize("objective", ["ttdm", "itc", "icti"])
def test_each_objective_decreases_on_a_tiny_batch(bart_dir, clip_teacher, images, objective):
    torch.manual_seed(0)
    m = VLKDModule(bart_dir, clip_teacher, config=VLKDConfig(weights={objective: 1.0}, lr=3e-3))
    batch = _batch(images)
    opt = m.configure_optimizers()

    def loss_at(seed):
        return m.compute_losses(batch, torch.Generator().manual_seed(seed))[objective]

    m.eval()  # fixed masks (seed) and no dropout: a clean before/after comparison
    with torch.no_grad():
        before = loss_at(0).item()
    m.train()
    for step in range(30):
        opt.zero_grad()
        loss_at(step).backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        after = loss_at(0).item()
    assert after < 0.7 * before, (objective, before, after)


def test_precomputed_embeddings_skip_the_teacher(bart_dir, clip_teacher, images):
    m = VLKDModule(bart_dir, clip_teacher)
    img = clip_teacher.encode_image(images).pooled
    txt = clip_teacher.encode_text(CAPTIONS[:4]).pooled
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    m.eval()
    a = m.compute_losses(_batch(images), g())
    b = m.compute_losses(VLKDBatch(CAPTIONS[:4], image_embeds=img, text_embeds=txt), g())
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_config_errors(bart_dir, clip_teacher):
    with pytest.raises(ValueError, match=r"unknown VLKD objective.*'itm'"):
        VLKDConfig(weights={"itm": 1.0})
    with pytest.raises(ValueError, match="at least one objective"):
        VLKDConfig(weights={"ttdm": 0.0})
    with pytest.raises(ValueError, match=r"weights\['itc'\]"):
        VLKDConfig(weights={"itc": -1.0})
    with pytest.raises(ValueError, match=r"VLKDConfig.distance.*allowed"):
        VLKDConfig(distance="l3")
    with pytest.raises(ValueError, match=r"VLKDConfig.projection.*allowed"):
        VLKDConfig(projection="conv")
    with pytest.raises(ValueError, match="mask_ratio"):
        VLKDConfig(mask_ratio=1.5)
    with pytest.raises(ValueError, match=r"d_model \(32\).*embedding size \(16\)"):
        VLKDModule(bart_dir, clip_teacher, config=VLKDConfig(projection="none"))
    with pytest.raises(FileNotFoundError, match="no BART checkpoint"):
        VLKDModule(bart_dir / "missing", clip_teacher)
    with pytest.raises(TypeError, match="CLIP-like teacher"):
        VLKDModule(bart_dir, object())


def test_batch_errors(images):
    with pytest.raises(ValueError, match=r"captions\[1\] is an empty caption"):
        VLKDBatch(["a red circle", "  "], images=images[:2])
    with pytest.raises(ValueError, match="images or image_embeds"):
        VLKDBatch(["a red circle"])
    with pytest.raises(ValueError, match="batch 4"):
        VLKDBatch(["a", "b"], images=images)


def test_trainer_fit_logs_and_checkpoint_has_no_teacher(bart_dir, clip_teacher, images, tmp_path):
    items = [{"caption": c, "image": im} for c, im in zip(CAPTIONS[:4], images)]
    dl = DataLoader(items, batch_size=2, collate_fn=collate_pairs)
    m = VLKDModule(bart_dir, clip_teacher)
    before = {k: v.clone() for k, v in m.student.state_dict().items()}
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        enable_checkpointing=False,
    )
    trainer.fit(m, dl, dl)
    logged = trainer.callback_metrics
    for k in ("vlkd/ttdm", "vlkd/itc", "vlkd/icti", "vlkd/loss", "val/loss", "val/infill_text"):
        assert k in logged and torch.isfinite(logged[k]), k
    assert any(not torch.equal(before[k], v) for k, v in m.student.state_dict().items())
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert all(k.split(".")[0] in {"student", "text_proj", "prefix", "logit_scale"} for k in state)
    m2 = VLKDModule(bart_dir, clip_teacher)
    m2.load_state_dict(state, strict=True)
    assert torch.equal(m2.prefix.mlp[0].weight, m.prefix.mlp[0].weight)
    m3 = VLKDModule.load_from_checkpoint(ckpt, teacher=clip_teacher)
    assert m3.config == m.config and m3.teacher is clip_teacher
    assert torch.equal(m3.student.lm_head.weight, m.student.lm_head.weight)


def test_freeze_parts(bart_dir, clip_teacher, images):
    m = VLKDModule(bart_dir, clip_teacher, config=VLKDConfig(freeze=("decoder",)))
    dec = m.student.get_decoder()
    assert not any(p.requires_grad for n, p in dec.named_parameters() if "embed_tokens" not in n)
    assert m.student.get_input_embeddings().weight.requires_grad
    m.compute_losses(_batch(images))["loss"].backward()
    assert dec.layers[0].fc1.weight.grad is None
    assert m.student.get_encoder().layers[0].fc1.weight.grad is not None
    opt_params = {id(p) for g in m.configure_optimizers().param_groups for p in g["params"]}
    assert id(dec.layers[0].fc1.weight) not in opt_params
    m2 = VLKDModule(bart_dir, clip_teacher, config=VLKDConfig(freeze=("embeddings", "encoder")))
    assert not m2.student.get_input_embeddings().weight.requires_grad
    assert not m2.student.get_encoder().layers[0].fc1.weight.requires_grad
    with pytest.raises(ValueError, match=r"freeze: unknown part\(s\) \['lm_head'\]"):
        VLKDConfig(freeze=("lm_head",))


def test_with_the_project_openclip_teacher(bart_dir, project_clip_teacher, images):
    m = VLKDModule(bart_dir, project_clip_teacher)
    assert m.embed_dim == project_clip_teacher.embed_dim == 16
    losses = m.compute_losses(_batch(images))
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert not any(k.startswith("_teacher") or ".visual." in k for k in m.state_dict())
    assert all(p.grad is None for p in project_clip_teacher.parameters())
