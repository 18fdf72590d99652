"""VQA v2 finetuning with MAD: :class:`VQADataModule` and :class:`VQAModule`.

The student classifies over an answer vocabulary (top-N training answers, saved with the run);
the task loss is binary cross-entropy on the soft targets (each answer's expected official
accuracy), scaled by the vocabulary size as in ViLT; the metric is the official VQA accuracy
(:class:`~mad_distill.metrics.VQAAccuracy`). The CLIP teacher scores the image against one prompt
per vocabulary answer (``"a photo of {answer}."``) for the confidence weights and the
instance-level KL. Questions none of whose answers is in the vocabulary have label -1: they still
train on their (all-zero) soft target, and get MAD weight 0 under ``gt_prob`` / ``correct``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from mad_distill.data.vqa import AnswerVocab, VQADataset
from mad_distill.metrics import VQAAccuracy
from mad_distill.tasks.common import TaskDataModule, TaskModule, _path

__all__ = ["VQADataModule", "VQAModule"]


class VQADataModule(TaskDataModule):
    """VQA v2 from the official files (see :class:`~mad_distill.data.vqa.VQADataset`).

    Args:
        train_questions / train_annotations / train_images: the training questions JSON,
            annotations JSON and COCO image folder (``train2014``).
        val_questions / val_annotations / val_images: the evaluation split (``val2014``).
        test_questions / test_images: optional test split (questions only: no metric).
        answer_vocab: JSON file of the answer vocabulary: loaded if it exists, else built from
            ``train_annotations`` and written there. ``None``: built, and written to the run's log
            directory at setup (class ids depend on it: keep it with the run).
        top_answers: vocabulary size when building it (3129 is the common choice).
        vocab_source: count ``multiple_choice_answer`` or all 10 ``answers`` when building.
        prompt_template: the teacher's zero-shot prompt per answer.
        image_pattern: COCO file name pattern (see ``VQADataset``).
        **kwargs: :class:`~mad_distill.tasks.common.TaskDataModule` (batch size, low-shot
            ``fraction`` / ``seed``, ``domain`` e.g. ``VQA_DOMAIN_SPLIT``, ...).
    """

    dataset_name = "vqa_v2"

    def __init__(
        self,
        train_questions: str,
        train_annotations: str,
        train_images: str,
        val_questions: str | None = None,
        val_annotations: str | None = None,
        val_images: str | None = None,
        test_questions: str | None = None,
        test_images: str | None = None,
        answer_vocab: str | None = None,
        top_answers: int = 3129,
        vocab_source: str = "multiple_choice_answer",
        prompt_template: str = "a photo of {answer}.",
        image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (val_questions is None) != (val_images is None):
            raise ValueError("give both val_questions and val_images, or neither")
        if (test_questions is None) != (test_images is None):
            raise ValueError("give both test_questions and test_images, or neither")
        self.paths = {
            "train": (_path(train_questions), _path(train_annotations), _path(train_images)),
            "val": (_path(val_questions), _path(val_annotations), _path(val_images)),
            "test": (_path(test_questions), None, _path(test_images)),
        }
        self.prompt_template = prompt_template
        self.image_pattern = image_pattern
        self.vocab_path = _path(answer_vocab)
        # built now: the model's head size and the metric's answer strings are linked to it
        if self.vocab_path is not None and Path(self.vocab_path).is_file():
            self.vocab = AnswerVocab.load(self.vocab_path)
        else:
            self.vocab = AnswerVocab.build(
                self.paths["train"][1],
                top_n=top_answers,
                source=vocab_source,  # type: ignore[arg-type]
            )
            if self.vocab_path is not None:
                Path(self.vocab_path).parent.mkdir(parents=True, exist_ok=True)
                self.vocab.save(self.vocab_path)

    @property
    def num_classes(self) -> int:
        return len(self.vocab)

    @property
    def answers(self) -> list[str]:
        return list(self.vocab.answers)

    def build_dataset(self, split: str) -> VQADataset | None:
        questions, annotations, images = self.paths[split]
        if questions is None:
            return None
        return VQADataset(
            questions,
            annotations,
            images,
            vocab=self.vocab,
            image_pattern=self.image_pattern,
            prompt_template=self.prompt_template,
            on_error=self.on_error,
            check_images=self.check_images,
        )

    def _labels(self, dataset: Any) -> None:
        return None  # soft multi-answer targets: the low-shot subset is not stratified

    def _write_manifests(self) -> None:
        super()._write_manifests()
        if self.vocab_path is None:
            trainer = getattr(self, "trainer", None)
            log_dir = getattr(trainer, "log_dir", None) if trainer is not None else None
            if log_dir is not None and trainer.is_global_zero:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                self.vocab.save(Path(log_dir) / "answer_vocab.json")


class VQAModule(TaskModule):
    """VQA v2: classification over the answer vocabulary (see the module doc).

    Args: as :class:`~mad_distill.tasks.common.TaskModule`; ``answers`` (the vocabulary) is
    required -- the CLI links it from :class:`VQADataModule`.
    """

    task_kind = "classify"

    def _num_classes(self, num_classes: int | None, answers: list[str] | None) -> int:
        if not answers:
            raise ValueError(
                "VQAModule needs answers (the answer vocabulary, linked from VQADataModule)"
            )
        if num_classes is not None and num_classes != len(answers):
            raise ValueError(f"num_classes={num_classes} but answers has {len(answers)} entries")
        self.val_metric = VQAAccuracy(answer_vocab=answers)
        self.test_metric = VQAAccuracy(answer_vocab=answers)
        return len(answers)

    def task_loss(self, logits: Tensor, batch: Any) -> Tensor:
        if batch.targets is None:
            raise ValueError("VQA training needs soft targets: give train_annotations")
        targets = batch.targets.to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]

    def _eval_step(self, batch: Any, metric: VQAAccuracy, prefix: str) -> None:
        tokens = self(batch.inputs)
        if batch.targets is not None:
            loss = self.task_loss(tokens.logits, batch)
            self.log(f"{prefix}/task_loss", loss, batch_size=len(batch), sync_dist=True)
        answers = [m["answers"] for m in batch.meta]
        if all(a is not None for a in answers):
            metric.update(tokens.logits, answers, [m["answer_type"] for m in batch.meta])
