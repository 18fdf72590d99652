"""Exact resume: a finetune killed mid-epoch and resumed from its checkpoint ends bit-identical to
an uninterrupted run (CPU), with shuffling, dropout and a step-dependent MAD schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scale_helpers import TinyMAD, ToyData, collate, trainer
from torch.utils.data import DataLoader

from mad_distill.config import MADConfig
from mad_distill.resume import ExactResume, ResumableSampler, batches_done_in_epoch

N, BATCH = 10, 3  # 4 batches per epoch (the last one has 1 example)


class Model(TinyMAD):
    def __init__(self, *a, sampler="resumable", workers=0, **kw):
        super().__init__(*a, dropout=0.2, **kw)  # dropout: the RNG state matters
        self.sampler_kind, self.workers = sampler, workers
        self.seen: list[list[str]] = []

    def train_dataloader(self):
        data = ToyData(N)
        if self.sampler_kind == "resumable":
            sampler = ResumableSampler(data, batch_size=BATCH, seed=3, trainer=self.trainer)
            return DataLoader(
                data,
                batch_size=BATCH,
                sampler=sampler,
                collate_fn=collate,
                num_workers=self.workers,
            )
        gen = torch.Generator().manual_seed(3)
        return DataLoader(data, batch_size=BATCH, shuffle=True, generator=gen, collate_fn=collate)

    def training_step(self, batch, idx):
        self.seen.append(batch["mad"].keys)
        return super().training_step(batch, idx)


class Preempt(Callback):
    """Kill the run after ``step`` optimizer steps (after its checkpoint was written)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.step:
            raise RuntimeError("preempted")


def _cfg(spec):
    return MADConfig(
        teachers={"clip": spec},
        select=dict(source="relevance"),
        feat=dict(schedule=dict(kind="cosine", warmup_steps=2)),
    )


def _run(
    spec, tok, tmp, callbacks=(), ckpt=None, seed=0, exact=True, sampler="resumable", workers=0
):
    model = Model(_cfg(spec), tok, seed=seed, sampler=sampler, workers=workers)
    cbs = list(callbacks) + ([ExactResume()] if exact else [])
    t = trainer(max_epochs=2, callbacks=cbs, enable_checkpointing=True, default_root_dir=tmp)
    t.fit(model, ckpt_path=ckpt)
    return model, t


@pytest.fixture(scope="module")
def full(tiny_clip_spec, word_tokenizer, tmp_path_factory):
    """The uninterrupted run (8 steps), with checkpoints every 3 steps."""
    tmp = tmp_path_factory.mktemp("full")
    ckpt = ModelCheckpoint(dirpath=tmp, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    model, t = _run(tiny_clip_spec, word_tokenizer, tmp, [ckpt])
    assert t.global_step == 8 and len(model.losses) == 8
    return model


@pytest.mark.parametrize(
    "kill_at, resume_at, workers",
    [(4, 3, 0), (7, 6, 0), (7, 6, 2)],  # mid epoch 0 / mid epoch 1 / with loader workers
)
def test_killed_mid_epoch_resumes_bit_identical(
    full, tiny_clip_spec, word_tokenizer, tmp_path, kill_at, resume_at, workers
):
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    with pytest.raises(RuntimeError, match="preempted"):
        _run(tiny_clip_spec, word_tokenizer, tmp_path, [ckpt, Preempt(kill_at)], workers=workers)
    path = tmp_path / f"step={resume_at}.ckpt"
    state = torch.load(path, weights_only=False)
    assert state["global_step"] == resume_at
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] in (
        resume_at % 4,
        resume_at % 4 - 1,  # saved at on_train_batch_end: Lightning completes it on restart
    )
    # a fresh process: other init seed, other global RNG state; everything must come back
    torch.manual_seed(999)
    resumed, t = _run(
        tiny_clip_spec, word_tokenizer, tmp_path, ckpt=str(path), seed=123, workers=workers
    )
    assert t.global_step == 8
    assert resumed.seen == full.seen[resume_at:]  # same batches, same order, none repeated
    assert resumed.losses == full.losses[resume_at:]  # bit-identical
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(
        full.trainer.optimizers[0].state_dict()["state"].items(),
        t.optimizers[0].state_dict()["state"].values(),
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"]), k


def test_without_exact_resume_dropout_diverges(full, tiny_clip_spec, word_tokenizer, tmp_path):
    """The RNG callback is what makes dropout reproducible (this test can fail the other way)."""
    path = Path(full.trainer.checkpoint_callback.dirpath) / "step=6.ckpt"
    torch.manual_seed(999)
    resumed, _ = _run(tiny_clip_spec, word_tokenizer, tmp_path, ckpt=str(path), exact=False)
    assert resumed.seen == full.seen[6:]  # the data order is still right ...
    assert resumed.losses != full.losses[6:]  # ... but the dropout masks are not


def test_plain_shuffled_loader_repeats_batches(full, tiny_clip_spec, word_tokenizer, tmp_path):
    """Why ResumableSampler: a plain shuffled loader restarts its epoch on resume."""
    tmp = tmp_path / "plain"
    ckpt = ModelCheckpoint(dirpath=tmp, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    plain, _ = _run(tiny_clip_spec, word_tokenizer, tmp, [ckpt], sampler="plain")
    torch.manual_seed(999)
    resumed, _ = _run(
        tiny_clip_spec, word_tokenizer, tmp, ckpt=str(Path(tmp) / "step=3.ckpt"), sampler="plain"
    )
    assert resumed.seen != plain.seen[3:]


def test_checkpoint_has_no_teacher_weights(full, tiny_clip_spec):
    ckpt = torch.load(
        Path(full.trainer.checkpoint_callback.dirpath) / "step=6.ckpt", weights_only=False
    )
    assert all(k.startswith(("model.", "mad_projectors.")) for k in ckpt["state_dict"])
    teacher = full.mad_teachers["clip"].model.state_dict()
    n_teacher = sum(v.numel() for v in teacher.values())
    n_ckpt = sum(v.numel() for v in ckpt["state_dict"].values())
    assert n_ckpt == sum(p.numel() for p in full.parameters())  # student + projectors only
    big = {tuple(v.shape): v for v in teacher.values() if v.numel() > 256}
    for k, v in ckpt["state_dict"].items():  # no teacher tensor hides under another name
        t = big.get(tuple(v.shape))
        assert t is None or not torch.equal(t, v), k
    assert n_teacher > 0 and ckpt["mad"]["teachers"] == full.mad_teacher_identities
    assert "ExactResume" in " ".join(ckpt["callbacks"])


def test_resume_with_other_teachers_is_refused(full, make_tiny_clip_spec, word_tokenizer, tmp_path):
    other = make_tiny_clip_spec(tmp_path / "other.pt", seed=5)
    path = Path(full.trainer.checkpoint_callback.dirpath) / "step=3.ckpt"
    with pytest.raises(ValueError, match=r"other MAD teachers[\s\S]*clip: checkpoint"):
        _run(other, word_tokenizer, tmp_path, ckpt=str(path))


def test_sampler_shards_and_skips():
    data = list(range(10))
    a = ResumableSampler(data, batch_size=2, seed=1, num_replicas=2, rank=0)
    b = ResumableSampler(data, batch_size=2, seed=1, num_replicas=2, rank=1)
    ia, ib = list(a), list(b)
    assert sorted(ia + ib) == data and len(ia) == len(ib) == 5
    a.set_epoch(1)
    assert list(a) != ia  # a new permutation per epoch, from (seed, epoch) only
    a.set_epoch(0)
    assert list(a) == ia

    class FakeTrainer:  # 5 batches per epoch, resumed after 7 steps: 2 done in epoch 1
        training, num_training_batches, accumulate_grad_batches = True, 5, 1
        global_step, current_epoch, limit_train_batches = 7, 1, 1.0

    assert batches_done_in_epoch(FakeTrainer) == 2
    FakeTrainer.num_training_batches = float("inf")  # before Lightning sets it
    assert batches_done_in_epoch(FakeTrainer) == 0
    assert batches_done_in_epoch(FakeTrainer, batches_per_epoch=5) == 2  # the sampler's count
    FakeTrainer.num_training_batches = 5
    a.trainer = FakeTrainer
    a.set_epoch(1)
    full = ResumableSampler(data, batch_size=2, seed=1, num_replicas=2, rank=0)
    full.set_epoch(1)
    assert list(a) == list(full)[4:]
    FakeTrainer.global_step = 5  # epoch 1 just started
    assert batches_done_in_epoch(FakeTrainer) == 0
    with pytest.raises(ValueError, match="batch_size"):
        ResumableSampler(data, batch_size=0)
