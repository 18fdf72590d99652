"""Datasets, batches and the :class:`WorldDataModule` of the embedded world.

A batch (:class:`WorldBatch`) holds the student's inputs (image tensor, text, VCR choices), the
labels (VQA soft scores too), and a :class:`~mad_distill.types.MADBatch` for the teachers: images
through the teacher's own eval transform, the student's text, the zero-shot candidate prompts and,
in ``mad.extra["candidate_groups"]`` ``[B, K]``, the class each candidate votes for (see
:func:`~mad_distill.data.world.zero_shot.group_logits`; ``-1`` = padding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mad_distill.data.splits import (
    LOW_SHOT_METHOD,
    STRATIFIED_METHOD,
    SplitManifest,
    low_shot_indices,
)
from mad_distill.data.world.generator import generate_images, generate_scene, task_rng
from mad_distill.data.world.render import DOMAINS, check_domain
from mad_distill.data.world.tasks import (
    _TASK_CODE,
    NUM_CANDIDATES,
    SNLI_LABELS,
    TASKS,
    VCR_MODES,
    VQA_ANSWERS,
    WorldInstance,
    check_task,
    make_instance,
    num_classes,
)
from mad_distill.types import MADBatch

#: default pool sizes: a training pool where 1 % is 100 items, 1k test items per domain
DEFAULT_POOL_SIZE = 10_000
DEFAULT_TEST_SIZE = 1_000
DEFAULT_VAL_SIZE = 500


def _to(x: Any, device: torch.device | str) -> Any:
    if isinstance(x, (Tensor, MADBatch)):
        return x.to(device)
    return x


def choice_texts(
    texts: Sequence[str], choices: Sequence[Sequence[str]], picks: Tensor
) -> list[str]:
    """VCR: each text read with its picked choice, ``texts[b] + " " + choices[b][picks[b]]``
    (what the teachers read, and the student's text for that choice)."""
    return [f"{t} {c[int(k)]}" for t, c, k in zip(texts, choices, picks.tolist())]


@dataclass
class WorldBatch:
    """A collated world batch.

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1], the student's images.
        texts: ``B`` student texts: VQA question, SNLI-VE hypothesis, VCR question (``q2a``) or
            question + correct answer (``qa2r``).
        labels: ``[B]`` long: VQA majority answer (index into :data:`VQA_ANSWERS`), SNLI-VE label
            (:data:`SNLI_LABELS`), VCR index of the correct choice.
        mad: the teachers' inputs (see the module docstring).
        choices: VCR only: ``B`` lists of 4 choice texts (answers for ``q2a``, rationales for
            ``qa2r``); the student reads ``texts[b] + " " + choices[b][k]`` for choice ``k``.
        answer_scores: VQA only: ``[B, len(VQA_ANSWERS)]`` soft scores ``min(#annotators/3, 1)``.
        ids: ``[B]`` long, item index in its pool (join Q→A and QA→R predictions on it).
        qtypes: question / statement type per item.
        rationale_labels: VCR ``q2a`` only: ``[B]`` the rationale label, for Q→AR bookkeeping.
    """

    images: Tensor
    texts: list[str]
    labels: Tensor
    mad: MADBatch
    task: str
    domain: str
    ids: Tensor
    qtypes: list[str] = field(default_factory=list)
    choices: list[list[str]] | None = None
    answer_scores: Tensor | None = None
    rationale_labels: Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def to(self, device: torch.device | str) -> WorldBatch:
        return WorldBatch(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})


def _default_teacher_preprocess(image_size: int) -> Callable:
    """open_clip's eval transform for the world teacher (64 px, CLIP mean/std)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(size=image_size), is_train=False)


class WorldTaskDataset(Dataset):
    """Items ``indices`` of one world split, for one task and one image domain.

    Args:
        task: one of :data:`TASKS`.
        domain: one of :data:`DOMAINS`.
        indices: item indices in the split's pool (any non-negative ints).
        split: ``"train"`` or ``"test"`` pool.
        world_seed: which world (the scenes and questions).
        image_size: image side in pixels.
        vcr_mode: ``"q2a"`` or ``"qa2r"`` (VCR only).
        teacher_preprocess: PIL image → ``[3, h, w]`` tensor for ``mad.teacher_images`` (default:
            the world teacher's open_clip eval transform); ``None`` disables teacher images only
            if ``teacher_images=False``.
        teacher_images: whether batches carry teacher images.
        cache_images: keep rendered images in memory (they are re-rendered identically otherwise).
    """

    def __init__(
        self,
        task: str,
        domain: str,
        indices: Sequence[int] | np.ndarray,
        split: str = "train",
        world_seed: int = 0,
        image_size: int = 64,
        vcr_mode: str = "q2a",
        teacher_preprocess: Callable | None = None,
        teacher_images: bool = True,
        cache_images: bool = True,
    ) -> None:
        self.task = check_task(task)
        self.domain = check_domain(domain)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if vcr_mode not in VCR_MODES:
            raise ValueError(f"vcr_mode: unknown mode {vcr_mode!r}; known: {list(VCR_MODES)}")
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or len(self.indices) == 0:
            raise ValueError("indices must be a non-empty 1-D sequence of item indices")
        self.split, self.world_seed, self.image_size = split, world_seed, image_size
        self.vcr_mode = vcr_mode
        self.teacher_images = teacher_images
        self.teacher_preprocess = (
            teacher_preprocess
            if teacher_preprocess is not None or not teacher_images
            else _default_teacher_preprocess(image_size)
        )
        self.cache_images = cache_images
        self._scenes = [generate_scene(world_seed, split, int(i)) for i in self.indices]
        code = _TASK_CODE[task]
        self.instances: list[WorldInstance] = [
            make_instance(task, s, task_rng(world_seed, split, code, int(i)))
            for s, i in zip(self._scenes, self.indices)
        ]
        self._images: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return np.array([self._label(x) for x in self.instances], np.int64)

    def _label(self, x: WorldInstance) -> int:
        return x.rationale_label if self.task == "vcr" and self.vcr_mode == "qa2r" else x.label

    def images(self, positions: Sequence[int]) -> np.ndarray:
        """``uint8 [n, H, W, 3]`` images at dataset positions (rendered in one vectorised call)."""
        todo = [p for p in positions if p not in self._images]
        if todo:
            imgs = generate_images(
                self.world_seed,
                self.split,
                self.domain,
                [int(self.indices[p]) for p in todo],
                size=self.image_size,
                scenes=[self._scenes[p] for p in todo],
            )
            if not self.cache_images:
                got = dict(zip(todo, imgs))
                return np.stack([got[p] if p in got else self._images[p] for p in positions])
            self._images.update(zip(todo, imgs))
        return np.stack([self._images[p] for p in positions])

    def __getitem__(self, pos: int) -> int:
        # items are collated (and rendered) in batches by :meth:`collate`
        if not 0 <= pos < len(self):
            raise IndexError(f"index {pos} out of range for a dataset of {len(self)}")
        return pos

    def collate(self, positions: Sequence[int]) -> WorldBatch:
        """Build a :class:`WorldBatch` from dataset positions."""
        positions = [int(p) for p in positions]
        insts = [self.instances[p] for p in positions]
        raw = self.images(positions)
        images = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(255.0)
        teacher = None
        if self.teacher_images:
            teacher = torch.stack([self.teacher_preprocess(Image.fromarray(im)) for im in raw])
        labels = torch.tensor([self._label(x) for x in insts], dtype=torch.long)
        ids = torch.from_numpy(self.indices[positions])
        keys = [
            f"world/{self.task}/{self.split}/{self.world_seed}/{self.domain}/{int(i)}" for i in ids
        ]
        texts = [x.text for x in insts]
        choices = answer_scores = rationale_labels = None
        extra: dict[str, Any] = {"task": self.task, "domain": self.domain}
        if self.task == "vcr":
            if self.vcr_mode == "q2a":
                choices = [list(x.choices) for x in insts]
                candidates = [list(x.candidates) for x in insts]
                rationale_labels = torch.tensor([x.rationale_label for x in insts])
            else:
                texts = [f"{x.text} {x.choices[x.label]}" for x in insts]
                choices = [list(x.rationales) for x in insts]
                candidates = [list(x.rationale_candidates) for x in insts]
            # the text the student reads for its ground-truth candidate
            mad_texts = choice_texts(texts, choices, labels)
            extra["candidate_groups"] = torch.arange(4).repeat(len(insts), 1)
        else:
            mad_texts = texts
            candidates = [list(x.candidates) for x in insts]
            extra["candidate_groups"] = torch.tensor([x.groups for x in insts], dtype=torch.long)
            if self.task == "vqa":
                answer_scores = torch.from_numpy(np.stack([x.scores for x in insts]))
        mad = MADBatch(
            teacher_images=teacher,
            texts=mad_texts,
            labels=labels,
            candidates=candidates,
            keys=keys,
            extra=extra,
        )
        return WorldBatch(
            images=images,
            texts=texts,
            labels=labels,
            mad=mad,
            task=self.task,
            domain=self.domain,
            ids=ids,
            qtypes=[x.qtype for x in insts],
            choices=choices,
            answer_scores=answer_scores,
            rationale_labels=rationale_labels,
        )


class WorldDataModule(L.LightningDataModule):
    """One task × condition of the embedded benchmark world.

    The student is finetuned on a low-shot subset of the ``train`` pool rendered in
    ``domain_train``, validated on held-out items of ``domain_train``, and tested on the same
    ``test`` items rendered in every domain of ``domain_test`` (one test dataloader per domain, in
    that order: ``dataloader_idx`` ↔ :attr:`test_domains`).

    Args:
        task: ``"vqa"``, ``"snli_ve"`` or ``"vcr"``.
        domain_train: image domain of the training (and validation) items.
        domain_test: domain(s) of the test items.
        fraction: low-shot fraction of the training pool, in (0, 1].
        seed: split seed (which low-shot subset) and the train loader's shuffling seed.
        pool_size: training pool size (1 % of the default 10 000 = 100 items).
        test_size: test items per domain; val_size: validation items (domain_train).
        batch_size: training batch size; eval_batch_size: for val/test (default 2 × batch_size).
        world_seed: which world; keep it fixed across runs that are compared.
        image_size: image side in pixels.
        vcr_mode: ``"q2a"`` or ``"qa2r"``.
        stratify: stratify the low-shot subset by label.
        teacher_preprocess: the image teacher's eval transform (default: the world teacher's).
        teacher_images: whether batches carry teacher images (off when features are cached).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        task: str,
        domain_train: str = "flat",
        domain_test: str | Sequence[str] = DOMAINS,
        fraction: float = 1.0,
        seed: int = 0,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        test_size: int = DEFAULT_TEST_SIZE,
        val_size: int = DEFAULT_VAL_SIZE,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        world_seed: int = 0,
        image_size: int = 64,
        vcr_mode: str = "q2a",
        stratify: bool = True,
        teacher_preprocess: Callable | None = None,
        teacher_images: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.task = check_task(task)
        self.domain_train = check_domain(domain_train)
        tests = [domain_test] if isinstance(domain_test, str) else list(domain_test)
        if not tests:
            raise ValueError("domain_test must name at least one domain")
        self.test_domains = [check_domain(d) for d in tests]
        if vcr_mode not in VCR_MODES:
            raise ValueError(f"vcr_mode: unknown mode {vcr_mode!r}; known: {list(VCR_MODES)}")
        for name, v, lo in (
            ("pool_size", pool_size, 1),
            ("test_size", test_size, 1),
            ("val_size", val_size, 0),
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
            ("world_seed", world_seed, 0),
            ("num_workers", num_workers, 0),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.fraction, self.seed = fraction, seed
        self.pool_size, self.test_size, self.val_size = pool_size, test_size, val_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.world_seed, self.image_size, self.vcr_mode = world_seed, image_size, vcr_mode
        self.stratify = stratify
        self.teacher_preprocess = teacher_preprocess
        self.teacher_images = teacher_images
        self.num_workers = num_workers
        self.train_indices = self._train_indices()  # validates fraction early
        self.train_dataset: WorldTaskDataset | None = None
        self.val_dataset: WorldTaskDataset | None = None
        self.test_datasets: dict[str, WorldTaskDataset] = {}

    # ---------------------------------------------------------------- task facts
    @property
    def num_classes(self) -> int:
        """Classes of the task head (VQA answers, 3 SNLI-VE labels, 4 VCR choices)."""
        return num_classes(self.task)

    @property
    def class_names(self) -> list[str]:
        return {
            "vqa": list(VQA_ANSWERS),
            "snli_ve": list(SNLI_LABELS),
            "vcr": ["choice 0", "choice 1", "choice 2", "choice 3"],
        }[self.task]

    @property
    def num_candidates(self) -> int:
        """Teacher zero-shot candidates per item (``mad.candidates`` lists have this length)."""
        return NUM_CANDIDATES[self.task]

    # ---------------------------------------------------------------- splits
    def _train_indices(self) -> np.ndarray:
        labels = None
        if self.stratify:
            labels = _pool_labels(self.task, self.world_seed, self.pool_size, self.vcr_mode)
        return low_shot_indices(self.pool_size, self.fraction, self.seed, labels=labels)

    def _dataset(self, domain: str, indices: np.ndarray, split: str) -> WorldTaskDataset:
        return WorldTaskDataset(
            self.task,
            domain,
            indices,
            split=split,
            world_seed=self.world_seed,
            image_size=self.image_size,
            vcr_mode=self.vcr_mode,
            teacher_preprocess=self.teacher_preprocess,
            teacher_images=self.teacher_images,
        )

    @property
    def test_indices(self) -> np.ndarray:
        return np.arange(self.test_size, dtype=np.int64)

    @property
    def val_indices(self) -> np.ndarray:
        # held out from the same test pool, after the test items
        return np.arange(self.test_size, self.test_size + self.val_size, dtype=np.int64)

    def manifests(self) -> dict[str, SplitManifest]:
        """:class:`SplitManifest` of the train, val and each test split."""
        ds = f"world/{self.task}"
        extra = {"world_seed": self.world_seed, "vcr_mode": self.vcr_mode, "pool": "train"}
        out = {
            "train": SplitManifest.from_indices(
                self.train_indices,
                dataset=ds,
                split="train",
                fraction=self.fraction,
                seed=self.seed,
                n_total=self.pool_size,
                method=STRATIFIED_METHOD if self.stratify else LOW_SHOT_METHOD,
                domains=[self.domain_train],
                extra=extra,
            )
        }
        test_extra = dict(extra, pool="test")
        if self.val_size:
            out["val"] = SplitManifest.from_indices(
                self.val_indices,
                dataset=ds,
                split="val",
                fraction=1.0,
                seed=self.seed,
                n_total=self.val_size,
                method=f"test-pool items [{self.test_size}, {self.test_size + self.val_size})",
                domains=[self.domain_train],
                extra=test_extra,
            )
        for d in self.test_domains:
            out[f"test/{d}"] = SplitManifest.from_indices(
                self.test_indices,
                dataset=ds,
                split=f"test/{d}",
                fraction=1.0,
                seed=self.seed,
                n_total=self.test_size,
                method=f"test-pool items [0, {self.test_size})",
                domains=[d],
                extra=test_extra,
            )
        return out

    def write_manifests(self, directory: str | Path) -> list[Path]:
        """Write one manifest JSON per split into ``directory`` (atomically)."""
        directory = Path(directory)
        return [
            m.write(directory / f"{name.replace('/', '_')}.json")
            for name, m in self.manifests().items()
        ]

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.domain_train, self.train_indices, "train")
        if stage in (None, "fit", "validate") and self.val_dataset is None and self.val_size:
            self.val_dataset = self._dataset(self.domain_train, self.val_indices, "test")
        if stage in (None, "test", "predict"):
            for d in self.test_domains:
                if d not in self.test_datasets:
                    self.test_datasets[d] = self._dataset(d, self.test_indices, "test")

    def _loader(self, ds: WorldTaskDataset, batch_size: int, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=gen,
            collate_fn=ds.collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_size:
            return []
        if self.val_dataset is None:
            self.setup("validate")
        return self._loader(self.val_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        if any(d not in self.test_datasets for d in self.test_domains):
            self.setup("test")
        return [
            self._loader(self.test_datasets[d], self.eval_batch_size, shuffle=False)
            for d in self.test_domains
        ]


def _pool_labels(task: str, world_seed: int, n: int, vcr_mode: str = "q2a") -> np.ndarray:
    code = _TASK_CODE[task]
    out = np.empty(n, np.int64)
    for i in range(n):
        x = make_instance(
            task, generate_scene(world_seed, "train", i), task_rng(world_seed, "train", code, i)
        )
        out[i] = x.rationale_label if task == "vcr" and vcr_mode == "qa2r" else x.label
    return out


def world_vocabulary(n_scenes: int = 2000, world_seed: int = 0) -> list[str]:
    """Every text the student can read in the world's tasks, for building a word vocabulary
    (e.g. ``WordTokenizer.build(world_vocabulary())``): questions, hypotheses, VCR answers and
    rationales of ``n_scenes`` train items per task, plus the answer vocabulary."""
    texts: list[str] = list(VQA_ANSWERS)
    for task in TASKS:
        code = _TASK_CODE[task]
        for i in range(n_scenes):
            x = make_instance(
                task, generate_scene(world_seed, "train", i), task_rng(world_seed, "train", code, i)
            )
            texts.append(x.text)
            texts += x.choices or []
            texts += x.rationales or []
    return texts
