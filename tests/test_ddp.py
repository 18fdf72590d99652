"""Two CPU processes (gloo) give the same MAD loss, gradients and logged parts as one process on
the same global batch: the confidence weights are normalised over the global batch."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scale_helpers import TinyMAD, ToyData, collate, trainer
from torch.utils.data import DataLoader

from mad_distill import distributed
from mad_distill.config import MADConfig
from mad_distill.resume import ResumableSampler

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
GLOBAL = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(spec):
    # gt_prob weights differ per example: a per-rank normalisation would change the loss
    return MADConfig(teachers={"clip": spec}, weight=dict(mode="gt_prob", gamma=4.0))


def _global_batch():
    # labels 0 on rank 0's half, 1 on rank 1's: the halves' mean confidences differ
    data = ToyData(GLOBAL)
    return collate(
        [(data.images[i], data.texts[i], torch.tensor(int(i >= GLOBAL // 2)), data.keys[i])
         for i in range(GLOBAL)]
    )  # fmt: skip


def _half(batch, rank, world):
    n = GLOBAL // world
    sl = slice(rank * n, (rank + 1) * n)
    sub = [(batch["images"][i], batch["texts"][i], batch["labels"][i], batch["mad"].keys[i])
           for i in range(GLOBAL)][sl]  # fmt: skip
    return collate(sub)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world, port, model, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = _half(_global_batch(), rank, world)
        loss = model.step(batch)
        loss.backward()
        grads = _grads(model)
        for g in grads.values():  # what DDP does: average the gradients over ranks
            dist.all_reduce(g)
            g /= world
        parts = dict(model.mad_last)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        # the bug the global normalisation prevents: each rank normalises its own weights
        import mad_distill.mixin as mixin

        mixin._all_reduce_sum = lambda: None
        local = model.step(batch).detach()
        dist.all_reduce(local)
        torch.save(
            {"loss": mean_loss / world, "grads": grads, "parts": parts, "local": local / world},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _spawn(model, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), model, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_two_processes_match_one_process(tiny_clip, word_tokenizer, tmp_path):
    model = TinyMAD(_cfg(tiny_clip), word_tokenizer)
    single = TinyMAD(_cfg(tiny_clip), word_tokenizer)
    single.load_state_dict(model.state_dict())
    loss = single.step(_global_batch())
    loss.backward()
    ref_grads, ref_parts = _grads(single), single.mad_last

    r0, r1 = _spawn(model, tmp_path)
    for r in (r0, r1):
        torch.testing.assert_close(r["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for name, g in ref_grads.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
        # logged parts are global (one fused all-reduce), identical on both ranks
        for name in ("feat", "kl", "weight_mean", "selected_frac"):
            torch.testing.assert_close(r["parts"][name], ref_parts[name], rtol=1e-5, atol=1e-6)
        # the check can fail: normalising the weights per rank changes the loss
        assert not torch.allclose(r["local"], loss.detach(), rtol=1e-4, atol=1e-6)


class _DDPModel(TinyMAD):
    def __init__(self, *a, per_device, **kw):
        super().__init__(*a, **kw)
        self.per_device = per_device

    def train_dataloader(self):
        data = ToyData(GLOBAL)
        sampler = ResumableSampler(
            data, batch_size=self.per_device, shuffle=True, seed=0, trainer=self.trainer
        )
        return DataLoader(data, batch_size=self.per_device, sampler=sampler, collate_fn=collate)


@pytest.mark.slow
def test_lightning_ddp_spawn_matches_single_device(tiny_clip_spec, word_tokenizer):
    """Lightning DDP on 2 CPU processes, 2 SGD steps, vs 1 process with the global batch."""
    one = _DDPModel(_cfg(tiny_clip_spec), word_tokenizer, per_device=4, sgd=True, lr=0.1)
    init = {k: v.clone() for k, v in one.state_dict().items()}
    trainer(max_steps=2).fit(one)
    two = _DDPModel(_cfg(tiny_clip_spec), word_tokenizer, per_device=2, sgd=True, lr=0.1)
    two.load_state_dict(init)
    t2 = trainer(max_steps=2, strategy="ddp_spawn", devices=2)
    t2.fit(two)
    for (k, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert float(t2.callback_metrics["mad/weight_mean"]) == pytest.approx(1.0, abs=1e-5)


def test_helpers_are_noops_in_one_process():
    assert not distributed.is_distributed()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.get_all_reduce() is None
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    parts = {"feat": torch.tensor(1.0)}
    assert distributed.reduce_mad_parts(parts, torch.tensor(1.0), torch.tensor(2.0)) == parts


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
