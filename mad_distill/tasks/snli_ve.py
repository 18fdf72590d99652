"""SNLI-VE finetuning with MAD: :class:`SNLIVEDataModule` and :class:`SNLIVEModule`.

Three-way classification (entailment / neutral / contradiction) of (image, hypothesis) with
cross-entropy; metric :class:`~mad_distill.metrics.SNLIVEAccuracy` (overall and per class). The
CLIP teacher scores the image against three per-example label prompts built from the hypothesis
(:data:`~mad_distill.data.snli_ve.SNLI_VE_LABEL_PROMPTS`).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from mad_distill.data.snli_ve import SNLI_VE_LABELS, SNLIVEDataset
from mad_distill.metrics import SNLIVEAccuracy
from mad_distill.tasks.common import TaskDataModule, TaskModule, _path

__all__ = ["SNLIVEDataModule", "SNLIVEModule"]


class SNLIVEDataModule(TaskDataModule):
    """SNLI-VE from ``snli_ve_{train,dev,test}.jsonl`` and ``flickr30k-images``.

    Args:
        train / val / test: the jsonl files (``val``: usually ``snli_ve_dev.jsonl``; ``test``
            optional).
        image_dir: the ``flickr30k-images`` folder.
        image_pattern: image file name from ``{image_id}``.
        **kwargs: :class:`~mad_distill.tasks.common.TaskDataModule` (batch size, low-shot
            ``fraction`` / ``seed`` / ``stratify``, ``domain`` e.g. ``SNLI_VE_DOMAIN_SPLIT``, ...).
    """

    dataset_name = "snli_ve"

    def __init__(
        self,
        train: str,
        image_dir: str,
        val: str | None = None,
        test: str | None = None,
        image_pattern: str = "{image_id}.jpg",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.files = {"train": _path(train), "val": _path(val), "test": _path(test)}
        self.image_dir = _path(image_dir)
        self.image_pattern = image_pattern

    @property
    def num_classes(self) -> int:
        return len(SNLI_VE_LABELS)

    def build_dataset(self, split: str) -> SNLIVEDataset | None:
        path = self.files[split]
        if path is None:
            return None
        return SNLIVEDataset(
            path,
            self.image_dir,  # type: ignore[arg-type]
            image_pattern=self.image_pattern,
            on_error=self.on_error,
            check_images=self.check_images,
        )


class SNLIVEModule(TaskModule):
    """SNLI-VE: 3-way classification (see the module doc)."""

    task_kind = "classify"

    def _num_classes(self, num_classes: int | None, answers: list[str] | None) -> int:
        n = len(SNLI_VE_LABELS)
        if num_classes is not None and num_classes != n:
            raise ValueError(f"SNLI-VE has {n} classes, got num_classes={num_classes}")
        self.val_metric = SNLIVEAccuracy()
        self.test_metric = SNLIVEAccuracy()
        return n

    def task_loss(self, logits: Tensor, batch: Any) -> Tensor:
        return F.cross_entropy(logits, batch.labels, ignore_index=-1)

    def _eval_step(self, batch: Any, metric: SNLIVEAccuracy, prefix: str) -> None:
        tokens = self(batch.inputs)
        if bool((batch.labels >= 0).any()):
            loss = self.task_loss(tokens.logits, batch)
            self.log(f"{prefix}/task_loss", loss, batch_size=len(batch), sync_dist=True)
            metric.update(tokens.logits, batch.labels)
