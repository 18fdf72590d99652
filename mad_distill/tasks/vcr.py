"""VCR finetuning with MAD: :class:`VCRDataModule` and :class:`VCRModule`.

One multiple-choice student ranks the 4 choices of both VCR problems: it reads
``(image, text + choice)`` for each choice and scores it (``[B, 4]`` logits, cross-entropy on
the right choice). Training mixes Q->A and QA->R examples (``tasks``); validation scores both
problems of each record and reports :class:`~mad_distill.metrics.VCRAccuracy` (Q->A, QA->R,
Q->AR). MAD distils the student's run on the right choice; the teachers read
``text + " " + right choice``, and the CLIP teacher's zero-shot scores are the image against each
choice (the reader's ``candidate_template``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset

from mad_distill.data.vcr import VCR_NUM_CHOICES, VCRDataset
from mad_distill.metrics import VCRAccuracy
from mad_distill.tasks.common import TaskDataModule, TaskModule, _path

__all__ = ["VCRDataModule", "VCRModule"]

_TASKS = ("q2a", "qa2r")


class _Paired(Dataset):
    """Q->A and QA->R items of the same record (the readers align them by index)."""

    def __init__(self, q2a: Dataset, qa2r: Dataset) -> None:
        if len(q2a) != len(qa2r):  # type: ignore[arg-type]
            raise ValueError(f"Q->A and QA->R datasets differ in length: {len(q2a)}, {len(qa2r)}")  # type: ignore[arg-type]
        self.q2a, self.qa2r = q2a, qa2r

    def __len__(self) -> int:
        return len(self.q2a)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.q2a[i], self.qa2r[i]


class _PairCollate:
    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, pairs: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
        return self.collate([p[0] for p in pairs]), self.collate([p[1] for p in pairs])


class VCRDataModule(TaskDataModule):
    """VCR from ``vcr1annots/{train,val}.jsonl`` and ``vcr1images``.

    Args:
        train / val / test: the annotation jsonl files (``test`` must carry labels to be scored;
            the official ``test.jsonl`` does not, evaluate on ``val.jsonl``).
        image_dir: the ``vcr1images`` folder.
        tasks: which problems to train on: ``["q2a", "qa2r"]`` (default) or one of them.
        load_boxes: read the detection boxes (for region-based students; ViLT and the built-in
            student do not use them).
        candidate_template: the teacher's zero-shot prompt per choice (``{question}``,
            ``{choice}``).
        **kwargs: :class:`~mad_distill.tasks.common.TaskDataModule` (batch size, low-shot
            ``fraction`` / ``seed`` -- the same records for both problems --, ``domain`` e.g.
            ``VCR_DOMAIN_SPLIT``, ...).
    """

    dataset_name = "vcr"

    def __init__(
        self,
        train: str,
        image_dir: str,
        val: str | None = None,
        test: str | None = None,
        tasks: list[str] | None = None,
        load_boxes: bool = False,
        candidate_template: str = "{choice}",
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        tasks = list(_TASKS) if tasks is None else list(tasks)
        bad = [t for t in tasks if t not in _TASKS]
        if not tasks or bad or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be distinct values from {_TASKS}, got {tasks!r}")
        self.tasks = tasks
        self.files = {"train": _path(train), "val": _path(val), "test": _path(test)}
        self.image_dir = _path(image_dir)
        self.load_boxes = load_boxes
        self.candidate_template = candidate_template

    @property
    def num_classes(self) -> int:
        return VCR_NUM_CHOICES

    def _reader(self, path: str, task: str) -> VCRDataset:
        return VCRDataset(
            path,
            self.image_dir,  # type: ignore[arg-type]
            task=task,  # type: ignore[arg-type]
            load_boxes=self.load_boxes,
            candidate_template=self.candidate_template,
            on_error=self.on_error,
            check_images=self.check_images,
        )

    def build_dataset(self, split: str) -> dict[str, VCRDataset] | None:
        path = self.files[split]
        if path is None:
            return None
        tasks = self.tasks if split == "train" else list(_TASKS)
        return {t: self._reader(path, t) for t in tasks}

    def _with_collate(self, datasets: dict[str, VCRDataset], split: str) -> tuple[Dataset, Any]:
        first = next(iter(datasets.values()))
        collate = first.collator(**self._kwargs())
        # one subset of records for every problem: split on the first reader, apply to all
        sub = self._subset(first, split)
        idx = sub.indices if isinstance(sub, Subset) else None
        parts = {t: ds if idx is None else Subset(ds, idx) for t, ds in datasets.items()}
        if split == "train":
            return ConcatDataset(list(parts.values())), collate
        return _Paired(parts["q2a"], parts["qa2r"]), _PairCollate(collate)

    def _labels(self, dataset: Any) -> np.ndarray | None:
        fn = getattr(dataset, "label_ids", None)
        return None if fn is None else np.asarray(fn())


class VCRModule(TaskModule):
    """VCR Q->A / QA->R multiple choice (see the module doc)."""

    task_kind = "multiple_choice"

    def _num_classes(self, num_classes: int | None, answers: list[str] | None) -> int:
        if num_classes is not None and num_classes != VCR_NUM_CHOICES:
            raise ValueError(f"VCR has {VCR_NUM_CHOICES} choices, got num_classes={num_classes}")
        self.val_metric = VCRAccuracy()
        self.test_metric = VCRAccuracy()
        return VCR_NUM_CHOICES

    def task_loss(self, logits: Tensor, batch: Any) -> Tensor:
        return F.cross_entropy(logits, batch.labels, ignore_index=-1)

    def _eval_step(self, batch: tuple[Any, Any], metric: VCRAccuracy, prefix: str) -> None:
        qa, qr = batch
        a_logits = self(qa.inputs).logits
        r_logits = self(qr.inputs).logits
        loss = (self.task_loss(a_logits, qa) + self.task_loss(r_logits, qr)) / 2
        self.log(f"{prefix}/task_loss", loss, batch_size=len(qa), sync_dist=True)
        metric.update(a_logits, qa.labels, r_logits, qr.labels)
