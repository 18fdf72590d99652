"""Shared machinery of the task finetunes: the task LightningModule and LightningDataModule bases.

:class:`TaskModule` is a ``MADMixin`` LightningModule around a :class:`~mad_distill.tasks.students.
TaskStudent`: ``L = L_task + MAD`` in training (MAD, arXiv 2204.10496: distillation during
finetuning only), the task metric in validation / test, AdamW with linear warm-up and decay.
Without a ``mad`` config it is the plain finetuning baseline (same code path, no teachers).

:class:`TaskDataModule` wraps a reader of :mod:`mad_distill.data` with the low-shot and
domain-shift splits of :mod:`mad_distill.data.splits`; it takes the collate functions (the
student's transforms, the CLIP teacher's preprocess) from the module it is trained with, and
writes the split manifests next to the run's logs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from mad_distill.config import MADConfig
from mad_distill.data.splits import SplitManifest, low_shot_indices
from mad_distill.mixin import MADMixin
from mad_distill.tasks.students import StudentFactory, TaskStudent, teacher_texts
from mad_distill.types import MADBatch, StudentTokens

log = logging.getLogger("mad_distill.tasks")

__all__ = ["TaskDataModule", "TaskModule"]


class TaskModule(MADMixin, L.LightningModule):
    """Base of the task modules (:class:`~mad_distill.tasks.vqa.VQAModule`, ...).

    Args:
        student: ``student(task, num_classes) -> TaskStudent`` (YAML: ``class_path`` of
            :class:`~mad_distill.tasks.students.BuiltinTaskStudent` or
            :class:`~mad_distill.students.vilt.ViltStudent` with its ``init_args``).
        mad: the :class:`~mad_distill.config.MADConfig` fields (``teachers``, ``select``,
            ``weight``, ``feat``, ``kl``, ``kernels``); ``None`` finetunes without distillation.
        num_classes: number of task classes; linked from the data module by the CLI.
        answers: the VQA answer vocabulary (class id -> answer); linked from the data module.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_ratio: fraction of the training steps with a linear learning-rate warm-up; the
            rate then decays linearly to 0.
        teacher_kwargs: per teacher role, keyword arguments for ``create_teacher`` (e.g.
            ``{"clip": {"precision": "fp16"}}``).
    """

    #: ``"classify"`` or ``"multiple_choice"`` (set by subclasses)
    task_kind: str = "classify"

    def __init__(
        self,
        student: StudentFactory,
        mad: dict[str, Any] | None = None,
        num_classes: int | None = None,
        answers: list[str] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        teacher_kwargs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if lr <= 0 or weight_decay < 0 or not 0 <= warmup_ratio < 1:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, 0 <= warmup_ratio < 1; got lr={lr}, "
                f"weight_decay={weight_decay}, warmup_ratio={warmup_ratio}"
            )
        n = self._num_classes(num_classes, answers)
        self.student = student(self.task_kind, n)
        if not isinstance(self.student, TaskStudent):
            raise TypeError(f"student must build a TaskStudent, got {type(self.student).__name__}")
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.distill = mad is not None
        if mad is not None:
            config = MADConfig.from_dict(mad) if isinstance(mad, Mapping) else mad
            self.configure_mad(config, self.student.hidden_dim, teacher_kwargs=teacher_kwargs)

    def _num_classes(self, num_classes: int | None, answers: list[str] | None) -> int:
        return int(num_classes) if num_classes is not None else 0

    # ------------------------------------------------------------------ data hooks
    def collate_kwargs(self) -> dict[str, Any]:
        """Arguments for :class:`~mad_distill.data._common.TaskCollator`: the student's image
        transform and text processor, and the CLIP teacher's own ``preprocess`` (if any)."""
        teacher_tf = None
        if self.distill and "clip" in self.mad_teachers:
            teacher_tf = getattr(self.mad_teachers["clip"], "preprocess", None)
            if teacher_tf is None:
                raise ValueError("the CLIP teacher has no preprocess transform for its images")
        return {
            "image_transform": self.student.image_transform,
            "teacher_transform": teacher_tf,
            "text_processor": self.student.text_processor,
        }

    # ------------------------------------------------------------------ steps
    def forward(self, inputs: dict[str, Any], token_choice: Tensor | None = None) -> StudentTokens:
        return self.student(inputs, token_choice)

    def task_loss(self, logits: Tensor, batch: Any) -> Tensor:
        raise NotImplementedError

    def _token_choice(self, batch: Any) -> Tensor | None:
        if self.task_kind != "multiple_choice":
            return None
        # distil the run on the right choice (its text is what the teachers read)
        return batch.labels.clamp(min=0)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        choice = self._token_choice(batch)
        tokens = self(batch.inputs, choice)
        task = self.task_loss(tokens.logits, batch)
        loss = task
        if self.distill:
            mad_batch: MADBatch = batch.mad
            if self.task_kind == "multiple_choice":
                texts = teacher_texts(batch.inputs["texts"], batch.inputs["choices"], choice)
                mad_batch = replace(mad_batch, texts=texts)
            loss = task + self.mad_loss(mad_batch, tokens)
        bs = len(batch)
        self.log("train/task_loss", task, batch_size=bs, prog_bar=True)
        self.log("train/loss", loss, batch_size=bs)
        return loss

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(total - warmup, 1))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Any, metric: Any, prefix: str) -> None:
        """Log ``{prefix}/task_loss`` and update ``metric`` on one validation / test batch."""
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metric, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metric, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")

    # ------------------------------------------------------------------ metrics
    def _log_metric(self, metric: Any, prefix: str) -> None:
        if not metric.update_called:  # e.g. a test split without labels
            return
        values = metric.compute()
        self.log_dict(
            {f"{prefix}/{k}": v.float() for k, v in values.items()}, prog_bar=False, sync_dist=False
        )
        metric.reset()


# ---------------------------------------------------------------------------------- data


class TaskDataModule(L.LightningDataModule):
    """Base of the task data modules.

    Args:
        batch_size: training batch size.
        eval_batch_size: validation / test batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        fraction: low-shot fraction of the training set in (0, 1]
            (:func:`~mad_distill.data.splits.low_shot_indices`: nested seeded prefixes).
        seed: low-shot seed.
        stratify: stratify the low-shot subset by label (where the reader has labels).
        domain: domain-shift split ``{"by": ..., "train": [...], "test": [...]}`` plus the
            reader's other ``domains()`` arguments (e.g. ``n_groups``): train on the training
            file's records of the ``train`` domains, validate / test on the evaluation files'
            records of the ``test`` domains. The readers' defaults are the ``*_DOMAIN_SPLIT``
            dicts. ``None``: no domain shift.
        on_error: the readers' ``on_error`` (``"raise"`` or ``"skip"``).
        check_images: verify image files exist when indexing.
        manifest_dir: where the split manifests go; default the trainer's ``log_dir``.
    """

    #: dataset name in the manifests
    dataset_name: str = "task"

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        fraction: float = 1.0,
        seed: int = 0,
        stratify: bool = True,
        domain: dict[str, Any] | None = None,
        on_error: str = "raise",
        check_images: bool = True,
        manifest_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (name == "batch_size")
            ):
                raise ValueError(
                    f"{name} must be an int >= {int(name == 'batch_size')}, got {value!r}"
                )
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not (0 < fraction <= 1)
        ):
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size!r}")
        if domain is not None:
            missing = [k for k in ("train", "test") if k not in domain]
            if missing:
                raise ValueError(
                    f"domain needs 'train' and 'test' domain lists, missing {missing}: "
                    f"got {domain!r}"
                )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.fraction = fraction
        self.seed = seed
        self.stratify = stratify
        self.domain = None if domain is None else dict(domain)
        self.on_error = on_error
        self.check_images = check_images
        self.manifest_dir = manifest_dir
        self.manifests: dict[str, SplitManifest] = {}
        self._collate_kwargs: dict[str, Any] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # ------------------------------------------------------------------ linked to the model
    @property
    def num_classes(self) -> int | None:
        """Number of classes of the task (linked to the model's ``num_classes``)."""
        return None

    @property
    def answers(self) -> list[str] | None:
        """VQA answer vocabulary (linked to the model's ``answers``); None for other tasks."""
        return None

    # ------------------------------------------------------------------ subclass hooks
    def build_dataset(self, split: str) -> Any:
        """The reader for ``split`` (``"train"``, ``"val"`` or ``"test"``), or None if the
        split is not configured."""
        raise NotImplementedError

    def make_collate(self, dataset: Any, split: str) -> Any:
        return dataset.collator(**self._kwargs())

    def _labels(self, dataset: Any) -> Sequence[int] | None:
        fn = getattr(dataset, "label_ids", None)
        return fn() if callable(fn) else None

    # ------------------------------------------------------------------ setup
    def set_collate_kwargs(self, **kwargs: Any) -> None:
        """Give the collate arguments directly (when used without a Trainer / TaskModule)."""
        self._collate_kwargs = dict(kwargs)

    def _kwargs(self) -> dict[str, Any]:
        if self._collate_kwargs is not None:
            return self._collate_kwargs
        trainer = getattr(self, "trainer", None)
        module = None if trainer is None else trainer.lightning_module
        fn = getattr(module, "collate_kwargs", None)
        if not callable(fn):
            raise RuntimeError(
                f"{type(self).__name__} takes its transforms from the TaskModule it is trained "
                "with; outside a Trainer call set_collate_kwargs(image_transform=..., ...)"
            )
        return fn()

    def _subset(self, dataset: Any, split: str) -> Any:
        n = len(dataset)
        idx = np.arange(n, dtype=np.int64)
        method, doms, extra = "full", [], {}
        if self.domain is not None:
            side = "train" if split == "train" else "test"
            kw = {k: v for k, v in self.domain.items() if k not in ("train", "test")}
            wanted = self.domain[side]
            wanted = [wanted] if isinstance(wanted, str) else list(wanted)
            labels = np.asarray(dataset.domains(**kw), dtype=object)
            idx = np.flatnonzero(np.isin(labels, wanted)).astype(np.int64)
            if len(idx) == 0:
                raise ValueError(
                    f"domain split: no {split} record is in domains {wanted}; the {split} "
                    f"records' domains are {sorted(set(labels.tolist()))}"
                )
            method, doms = f"domain:{kw.get('by', 'default')}", wanted
            extra["domain"] = self.domain
        fraction = 1.0
        if split == "train" and self.fraction < 1.0:
            labels = self._labels(dataset) if self.stratify else None
            sub_labels = None if labels is None else np.asarray(labels)[idx]
            pick = low_shot_indices(len(idx), self.fraction, self.seed, sub_labels)
            idx = idx[pick]
            fraction = self.fraction
            method = f"low_shot+{method}" if method != "full" else "low_shot"
            extra["stratified"] = sub_labels is not None
        self.manifests[split] = SplitManifest.from_indices(
            idx,
            dataset=self.dataset_name,
            split=split,
            fraction=fraction,
            seed=self.seed,
            n_total=n,
            method=method,
            domains=doms,
            extra=extra,
        )
        if len(idx) == n:
            return dataset
        return Subset(dataset, idx.tolist())

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._with_collate(self.build_dataset("train"), "train")
        if stage in (None, "fit", "validate") and self.val_set is None:
            ds = self.build_dataset("val")
            self.val_set = None if ds is None else self._with_collate(ds, "val")
        if stage in (None, "test") and self.test_set is None:
            ds = self.build_dataset("test")
            self.test_set = None if ds is None else self._with_collate(ds, "test")
        self._write_manifests()

    def _with_collate(self, dataset: Any, split: str) -> tuple[Dataset, Any]:
        collate = self.make_collate(dataset, split)
        return self._subset(dataset, split), collate

    def _write_manifests(self) -> None:
        directory = self.manifest_dir
        if directory is None:
            trainer = getattr(self, "trainer", None)
            directory = getattr(trainer, "log_dir", None) if trainer is not None else None
            if trainer is not None and not trainer.is_global_zero:
                return
        if directory is None:
            return
        for split, m in self.manifests.items():
            m.write(Path(directory) / f"split_{self.dataset_name}_{split}.json")

    # ------------------------------------------------------------------ loaders
    def _loader(self, pair: Any, batch_size: int, shuffle: bool) -> DataLoader:
        if pair is None:
            raise RuntimeError(f"{type(self).__name__}: this split is not configured")
        dataset, collate = pair
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.path.expanduser(os.fspath(value))
