"""Exact resume: continue an interrupted finetune, mid-epoch, with bit-identical results.

Lightning's checkpoint restores the module, optimizers, schedulers and loop counters
(``global_step``, epoch, batches done). Two things it does not restore by itself:

* **the data order mid-epoch.** A shuffled ``DataLoader`` restarts its epoch from the first
  batch, with a permutation drawn from wherever its random generator happens to be.
  :class:`ResumableSampler` draws each epoch's permutation from ``(seed, epoch)`` only (as
  ``DistributedSampler`` does, and it shards across ranks like it) and, when Lightning resumes
  mid-epoch, skips the batches the interrupted run already trained on (it reads them from the
  restored ``global_step``, so prefetching and worker processes cannot shift it);
* **random number generators** (dropout, augmentation): :class:`ExactResume` stores the torch /
  CUDA / NumPy / Python generator states in the checkpoint and restores them when training
  starts again.

Use both::

    def train_dataloader(self):
        sampler = ResumableSampler(self.train_set, batch_size=32, seed=0, trainer=self.trainer)
        return DataLoader(self.train_set, batch_size=32, sampler=sampler)

    trainer = L.Trainer(callbacks=[ExactResume(), ModelCheckpoint(every_n_train_steps=500)])
    trainer.fit(model, ckpt_path="last.ckpt")

Under DDP each rank gets its shard of the same permutation; the RNG states stored are rank 0's
(Lightning writes one checkpoint), so ranks that drew different random numbers do not resume
bit-exactly; with dropout-free students (or the same seed on every rank) they do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sized
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DistributedSampler

from mad_distill.distributed import rank as _rank
from mad_distill.distributed import world_size as _world_size

__all__ = ["ExactResume", "ResumableSampler", "batches_done_in_epoch"]


def batches_done_in_epoch(trainer: L.Trainer, batches_per_epoch: int | None = None) -> int:
    """Batches of the current epoch the restored run already trained on (0 at an epoch start).

    Derived from ``trainer.global_step`` (restored from the checkpoint, changed only by optimizer
    steps), the epoch and the number of batches per epoch, so it is the same whenever it is asked
    during the epoch's start-up (before or after the loader's iterator is built).

    Args:
        trainer: the running trainer.
        batches_per_epoch: the loader's length, for when Lightning has not set
            ``trainer.num_training_batches`` yet (it builds the iterator first; with worker
            processes the sampler runs then); ``limit_train_batches`` is applied to it.
    """
    n = trainer.num_training_batches
    if not (isinstance(n, int) and n > 0):
        if batches_per_epoch is None:
            return 0
        n = _limit(batches_per_epoch, trainer.limit_train_batches)
    if n <= 0:
        return 0
    acc = max(1, int(trainer.accumulate_grad_batches))
    steps_per_epoch = math.ceil(n / acc)
    done_steps = int(trainer.global_step) - int(trainer.current_epoch) * steps_per_epoch
    return min(max(done_steps * acc, 0), n) if done_steps < steps_per_epoch else 0


def _limit(n: int, limit: int | float | None) -> int:
    """Lightning's ``limit_train_batches`` applied to ``n`` batches."""
    if limit is None:
        return n
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(n, limit)
    return n if float(limit) >= 1.0 else int(n * float(limit))


class ResumableSampler(DistributedSampler):
    """A seeded, epoch-keyed, rank-sharded sampler that resumes mid-epoch.

    Args:
        dataset: a sized dataset.
        batch_size: the DataLoader's batch size (to turn batches done into samples to skip).
        shuffle: a new permutation per epoch, from ``(seed, epoch)`` only.
        seed: the permutation seed; the same on every rank.
        drop_last: drop the tail that does not divide evenly among ranks (else pad by repeating).
        trainer: the Lightning trainer (``self.trainer`` inside ``train_dataloader``); without it,
            or outside ``fit``, nothing is skipped.
        num_replicas: number of ranks (default: the process group's world size, or 1).
        rank: this rank (default: the process group's rank, or 0).

    Lightning calls :meth:`set_epoch` every epoch and leaves a ``DistributedSampler`` in place
    under DDP (``use_distributed_sampler=True`` does not replace it).
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        trainer: L.Trainer | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be sized (have __len__), got {type(dataset).__name__}")
        super().__init__(
            dataset,
            num_replicas=_world_size() if num_replicas is None else num_replicas,
            rank=_rank() if rank is None else rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.batch_size = batch_size
        self.trainer = trainer

    def skip_samples(self) -> int:
        """Samples of this rank's shard to skip at the start of the next iteration."""
        trainer = self.trainer
        if trainer is None or not getattr(trainer, "training", False):
            return 0
        per_epoch = math.ceil(self.num_samples / self.batch_size)
        return batches_done_in_epoch(trainer, per_epoch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        trainer = self.trainer
        if trainer is not None and getattr(trainer, "training", False):
            # with worker processes Lightning builds the iterator before it calls set_epoch:
            # take the epoch from the (restored) trainer, as set_epoch will
            self.set_epoch(int(trainer.current_epoch))
        indices = list(super().__iter__())
        return iter(indices[self.skip_samples() :])


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(L.Callback):
    """Save the random generators' states in checkpoints and restore them on resume.

    Restoring happens in ``on_train_start``, after Lightning has built the data iterator (which
    draws a base seed from the global generator), so the first resumed batch sees exactly the
    generator state the interrupted run had after its last saved batch.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" not in state_dict:
            raise ValueError(
                "ExactResume state in the checkpoint has no 'rng' entry (a checkpoint from "
                "another callback version?)"
            )
        self._pending = state_dict["rng"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            _set_rng_state(self._pending)
            self._pending = None
