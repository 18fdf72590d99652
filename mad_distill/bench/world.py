"""The embedded world's bench runner: finetune the built-in student on one task, fraction and seed.

:func:`run_world` is the ``world`` dataset of :mod:`mad_distill.bench.harness`: it builds the
low-shot training split of :class:`~mad_distill.data.world.datamodule.WorldDataModule`, finetunes
a :class:`~mad_distill.students.BuiltinVLStudent` (from the shipped VL-pretrained ``world-vl``
weights, a checkpoint of ``mad-distill pretrain-student``, or from scratch) with a
:class:`WorldTaskModule` (``MADMixin`` + ``LightningModule``) under one method (the baseline, or a
partial :class:`~mad_distill.config.MADConfig`), and tests it on every test domain.

The teachers are frozen, so their outputs on a training item never change: every method and seed
of a bench reuses the same items, and :class:`TeacherFeatureStore` computes each item's teacher
outputs once per process (keyed by ``MADBatch.keys``) and serves them through the mixin's
:meth:`~mad_distill.mixin.MADMixin.mad_teacher_outputs` override point. This is what makes the
demo fit in minutes on a laptop CPU; the result is identical to running the teachers every step.

``bench.train`` options (all optional; defaults in :data:`TRAIN_DEFAULTS`): student size, epochs
and step bounds, batch size, learning rate, pool / test sizes, teacher spec, ``accelerator``
(``cpu`` or ``cuda``: it changes results in the last bits). Progress bars and threads are
:data:`RUNTIME` options (:func:`set_runtime`): they do not change results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor

from mad_distill._optim import decay_param_groups, warmup_cosine
from mad_distill.bench.augment import check_augment
from mad_distill.config import MADConfig
from mad_distill.data.augment import augment_images, create_augmentation, to_uint8
from mad_distill.data.world.student_pretrain import normalize_images
from mad_distill.mixin import MADMixin, MADTeacherOutputs
from mad_distill.students import BuiltinVLStudent
from mad_distill.students.tokenizer import WordTokenizer
from mad_distill.types import MADBatch, TeacherImageOutput, TeacherTextOutput

#: defaults of ``bench.train`` for the world runner (our design, tuned in
#: ``benchmarks/world_tuning.md``)
TRAIN_DEFAULTS: dict[str, Any] = {
    "teacher": "world-clip",  # any create_teacher spec for the ``clip`` role
    "text_teacher": None,  # optional ``text`` role spec (e.g. "hf:<MiniLM dir>")
    # the student's init: "world-vl" (the shipped VL-pretrained student), "scratch", or a
    # .safetensors file written by `mad-distill pretrain-student`
    "student": "world-vl",
    "dim": 64,
    "depth": 2,
    "heads": 4,
    "patch_size": 16,
    "tap_layer": -1,
    "dropout": 0.1,
    "epochs": 20,
    "min_steps": 150,
    "max_steps": 3000,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_frac": 0.1,
    "pool_size": 10_000,
    "test_size": 1000,
    "world_seed": 0,
    "deterministic": True,
    # where the student trains and the teachers run: "cpu" or "cuda" (Lightning's "gpu" is an
    # alias); results differ in the last bits between the two, so it is part of a run's
    # fingerprint (see resolve_train)
    "accelerator": "cpu",
}

#: the ``train.accelerator`` values (Lightning's names) -> the torch device type they run on
ACCELERATORS: dict[str, str] = {"cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}

#: how runs are shown and scheduled, not what they compute: kept out of ``bench.train`` (and so
#: out of the harness' run fingerprints), so a demo with progress bars resumes a quiet bench
RUNTIME: dict[str, Any] = {"progress_bar": False, "threads": None}


def set_runtime(progress_bar: bool | None = None, threads: int | None = None) -> None:
    """Set :data:`RUNTIME` options (``None`` leaves one unchanged)."""
    if progress_bar is not None:
        RUNTIME["progress_bar"] = bool(progress_bar)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        RUNTIME["threads"] = threads


#: the harness' task names -> (world task, VCR mode)
TASK_VARIANTS: dict[str, tuple[str, str]] = {
    "vqa": ("vqa", "q2a"),
    "snli_ve": ("snli_ve", "q2a"),
    "vcr": ("vcr", "q2a"),
    "vcr_qa2r": ("vcr", "qa2r"),
}

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- options
def train_options(bench_train: Mapping[str, Any]) -> dict[str, Any]:
    """``bench.train`` merged over :data:`TRAIN_DEFAULTS`; unknown keys raise ``ValueError``."""
    _check_train_keys(bench_train, "train")
    opts = {**TRAIN_DEFAULTS, **dict(bench_train)}
    for name in (
        "dim",
        "depth",
        "heads",
        "patch_size",
        "epochs",
        "batch_size",
        "pool_size",
        "test_size",
    ):
        v = opts[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"train.{name} must be an int >= 1, got {v!r}")
    for name in ("min_steps", "max_steps", "world_seed"):
        v = opts[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"train.{name} must be an int >= 0, got {v!r}")
    for name in ("lr", "weight_decay", "warmup_frac", "dropout"):
        v = opts[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"train.{name} must be a finite number >= 0, got {v!r}")
    if opts["lr"] <= 0:
        raise ValueError(f"train.lr must be > 0, got {opts['lr']!r}")
    if opts["warmup_frac"] >= 1:
        raise ValueError(f"train.warmup_frac must be in [0, 1), got {opts['warmup_frac']!r}")
    if not isinstance(opts["teacher"], str) or not opts["teacher"]:
        raise ValueError(f"train.teacher must be a teacher spec string, got {opts['teacher']!r}")
    acc = opts["accelerator"]
    if not isinstance(acc, str) or acc not in ACCELERATORS:
        raise ValueError(f"train.accelerator must be one of {sorted(ACCELERATORS)}, got {acc!r}")
    opts["accelerator"] = ACCELERATORS[acc]
    if not isinstance(opts["student"], str) or not opts["student"]:
        raise ValueError(
            f"train.student must be 'world-vl', 'scratch' or a .safetensors path, "
            f"got {opts['student']!r}"
        )
    if opts["student"] != "scratch":
        _, arch, _ = pretrained_student(opts["student"])
        for name in _ARCH_KEYS:
            if name in bench_train and bench_train[name] != arch[name]:
                raise ValueError(
                    f"train.{name}={bench_train[name]!r} conflicts with the pretrained student "
                    f"{opts['student']!r} ({name}={arch[name]!r}); drop it or use "
                    f"train.student: scratch"
                )
        opts.update({name: arch[name] for name in _ARCH_KEYS})
    return opts


def _check_train_keys(options: Mapping[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming the keys of ``options`` that are not world-runner
    ``train`` options (:data:`TRAIN_DEFAULTS`)."""
    unknown = sorted(set(options) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(
            f"{where}: unknown option(s) {unknown} for the world runner; known: "
            f"{sorted(TRAIN_DEFAULTS)}"
        )


#: student options a pretrained checkpoint fixes
_ARCH_KEYS = ("dim", "depth", "heads", "patch_size")


@lru_cache(maxsize=4)
def pretrained_student(spec: str) -> tuple[dict[str, Tensor], dict[str, Any], WordTokenizer]:
    """``(state without task head, config, tokenizer)`` of ``"world-vl"`` or a checkpoint file
    (SHA-256 checked; see :mod:`mad_distill.data.world.student_pretrain`)."""
    from mad_distill.data.world.student_pretrain import (
        WORLD_STUDENT_WEIGHTS,
        load_pretrained_student,
    )

    return load_pretrained_student(WORLD_STUDENT_WEIGHTS if spec == "world-vl" else spec)


#: per-method options of the world runner (not MADConfig fields), with their defaults
METHOD_OPTIONS: dict[str, Any] = {
    # also distil on this fraction of the training pool with its labels dropped (0: off)
    "unlabeled": 0.0,
    # bench task -> MADConfig.class_groups for that task's runs (tasks not named: none)
    "class_groups": {},
    # augmented views, e.g. {kind: augmix, labeled: false, unlabeled: true} (see bench.augment)
    "augment": None,
    # false: no teacher (a baseline that still takes the runner's other options)
    "distill": True,
    # weight of the task loss on the unlabelled rows with the teacher's zero-shot answer as a
    # hard label (Noisy Student / FixMatch-style pseudo-labels; 0: off; needs unlabeled > 0)
    "pseudo_labels": 0.0,
    # the student layer whose tokens MAD distils (None: train.tap_layer)
    "tap_layer": None,
    # overrides of bench.train for this method's runs, e.g. {min_steps: 2500, teacher: ...}
    "train": {},
    # bench task -> overrides of this method's fields for that task's runs, merged key by key
    # (nested dicts too), e.g. {vqa: {feat: {weight: 0.0}}, vcr: {tap_layer: 0}}
    "per_task": {},
}


def method_options(method_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The runner's own options of a bench method (:data:`METHOD_OPTIONS`), checked."""
    opts = {k: (method_cfg or {}).get(k, v) for k, v in METHOD_OPTIONS.items()}
    _check_per_task(opts["per_task"])
    over = opts["train"]
    if not isinstance(over, Mapping):
        raise TypeError(
            f"train (a method's) must map bench.train options to values, e.g. {{min_steps: "
            f"2500}}, got {type(over).__name__}"
        )
    _check_train_keys(over, "train (a method's)")
    tap = opts["tap_layer"]
    if tap is not None and (isinstance(tap, bool) or not isinstance(tap, int)):
        raise ValueError(f"tap_layer must be a layer index (int) or null, got {tap!r}")
    u = opts["unlabeled"]
    if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0 <= u <= 1:
        raise ValueError(
            f"unlabeled must be a fraction of the training pool in [0, 1] (0: off), got {u!r}"
        )
    groups = opts["class_groups"]
    if not isinstance(groups, Mapping):
        raise TypeError(
            "class_groups must map bench tasks to group ids, e.g. {snli_ve: [0, 0, 1]}, got "
            f"{type(groups).__name__}"
        )
    for task in groups:
        try:
            check_task(task)
        except ValueError as err:
            raise ValueError(f"class_groups: {err}") from None
    pl = opts["pseudo_labels"]
    if isinstance(pl, bool) or not isinstance(pl, (int, float)) or not 0 <= pl < math.inf:
        raise ValueError(f"pseudo_labels must be a finite weight >= 0 (0: off), got {pl!r}")
    if pl and not u:
        raise ValueError("pseudo_labels needs unlabeled inputs (unlabeled > 0)")
    if not isinstance(opts["distill"], bool):
        raise ValueError(f"distill must be true or false, got {opts['distill']!r}")
    if not opts["distill"]:
        bad = sorted(set(method_cfg or {}) - set(METHOD_OPTIONS))
        bad += [name for name in ("unlabeled", "class_groups", "pseudo_labels") if opts[name]]
        if bad:
            raise ValueError(f"distill: false (no teacher) takes no {bad}")
    opts["augment"] = check_augment(opts["augment"], u)
    return opts


def _check_per_task(per_task: Any) -> None:
    if not isinstance(per_task, Mapping):
        raise TypeError(
            "per_task must map bench tasks to overrides, e.g. {vqa: {feat: {weight: 0.0}}}, "
            f"got {type(per_task).__name__}"
        )
    for task, over in per_task.items():
        try:
            check_task(task)
        except ValueError as err:
            raise ValueError(f"per_task: {err}") from None
        if not isinstance(over, Mapping):
            raise TypeError(
                f"per_task.{task} must be a mapping of method fields, got {type(over).__name__}"
            )
        if "per_task" in over:
            raise ValueError(f"per_task.{task} cannot hold another per_task")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``, recursing into keys that are mappings in both."""
    out = dict(base)
    for k, v in over.items():
        both = isinstance(out.get(k), Mapping) and isinstance(v, Mapping)
        out[k] = _merge(out[k], v) if both else v
    return out


def mad_config_for(
    method_cfg: Mapping[str, Any], opts: Mapping[str, Any], task: str | None = None
) -> MADConfig:
    """A bench method's partial MAD config completed with the runner's teachers (and, for
    ``task``, the method's ``class_groups`` of that task)."""
    data = {k: v for k, v in method_cfg.items() if k not in METHOD_OPTIONS}
    groups = method_options(method_cfg)["class_groups"].get(task)
    if groups is not None:
        data["class_groups"] = groups
    if "teachers" not in data:
        teachers = {"clip": opts["teacher"]}
        if opts.get("text_teacher"):
            teachers["text"] = opts["text_teacher"]
        data["teachers"] = teachers
    try:
        return MADConfig.from_dict(data)
    except ValueError as err:
        if "unknown field" in str(err):
            raise ValueError(f"{err}; the world runner also takes {tuple(METHOD_OPTIONS)}") from err
        raise


def check_task(task: str) -> tuple[str, str]:
    if task not in TASK_VARIANTS:
        raise ValueError(f"task: unknown world task {task!r}; known: {sorted(TASK_VARIANTS)}")
    return TASK_VARIANTS[task]


# ----------------------------------------------------------------------------- data
@lru_cache(maxsize=4)
def world_tokenizer(world_seed: int = 0) -> WordTokenizer:
    """The student's word vocabulary: every word of the world's task texts."""
    from mad_distill.data.world.datamodule import world_vocabulary

    return WordTokenizer.build(world_vocabulary(n_scenes=400, world_seed=world_seed))


@lru_cache(maxsize=64)
def _dataset(
    task: str, domain: str, split: str, indices: tuple[int, ...], world_seed: int, vcr_mode: str
):
    from mad_distill.data.world.datamodule import WorldTaskDataset

    # teacher images are made by the feature store (from the same rendered pixels), not per batch
    return WorldTaskDataset(
        task,
        domain,
        list(indices),
        split=split,
        world_seed=world_seed,
        vcr_mode=vcr_mode,
        teacher_images=False,
    )


@lru_cache(maxsize=64)
def _train_indices(
    task: str, fraction: float, seed: int, pool_size: int, world_seed: int, vcr_mode: str
) -> tuple[int, ...]:
    from mad_distill.data.world.datamodule import WorldDataModule

    dm = WorldDataModule(
        task,
        fraction=fraction,
        seed=seed,
        pool_size=pool_size,
        world_seed=world_seed,
        vcr_mode=vcr_mode,
        teacher_images=False,
    )
    return tuple(int(i) for i in dm.train_indices)


def _loader(ds, batch_size: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=ds.collate
    )


# ----------------------------------------------------------------------------- teacher cache
def _raw_pixels(images: Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` pixels in ``[0, 1]`` as the ``uint8 [B, H, W, 3]`` the world renders
    (exact for rendered images)."""
    return to_uint8(images.cpu()).permute(0, 2, 3, 1).contiguous().numpy()


class TeacherFeatureStore:
    """Per-item teacher outputs, computed once and served by ``MADBatch.keys``.

    Holds, per key: CLIP image tokens / joint tokens / attention / pooled embedding, the CLIP text
    tower's (and optionally the ``text`` teacher's) outputs on the item's text, and the zero-shot
    class logits ``[C]`` (candidate logits reduced per class by
    :func:`~mad_distill.data.world.zero_shot.group_logits`; classes without a candidate get a
    large negative logit, so their teacher probability is 0 but every value stays finite).

    Args:
        teachers: role -> frozen teacher (``clip`` required, ``text`` optional).
        num_classes: classes ``C`` of the student's task head.
    """

    def __init__(self, teachers: Mapping[str, torch.nn.Module], num_classes: int) -> None:
        if "clip" not in teachers:
            raise ValueError("TeacherFeatureStore needs a 'clip' teacher")
        self.teachers = dict(teachers)
        self.num_classes = num_classes
        self._items: dict[str, dict[str, Tensor]] = {}
        # the current step's augmented views (see set_views)
        self._views: dict[str, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @torch.no_grad()
    def fill(self, dataset, batch_size: int = 128, unlabeled: bool = False) -> None:
        """Compute the outputs of every item of a ``WorldTaskDataset`` not stored yet.

        ``unlabeled=True`` stores the items as unlabelled inputs, under
        ``key + UNLABELED_SUFFIX``: the teachers then never read the ground truth, so VCR's
        text is the question with the teacher's zero-shot choice, not the correct one (see
        :func:`unlabeled_view`).
        """
        positions = list(range(len(dataset)))
        for start in range(0, len(positions), batch_size):
            pos = positions[start : start + batch_size]
            batch = dataset.collate(pos)
            keys = self._keys(batch, unlabeled)
            if all(k in self._items for k in keys):
                continue
            items = self._compute(batch, dataset.images(pos), unlabeled)
            for k, item in zip(keys, items):
                self._items.setdefault(k, item)

    @torch.no_grad()
    def set_views(self, batches: Sequence[tuple[Any, bool]]) -> None:
        """Compute the outputs of this step's augmented views (``(world batch, unlabeled)``
        pairs, each batch's ``images`` already augmented and its keys made unique to the view)
        and serve them until the next call; they are never stored."""
        self._views = {}
        for batch, unlabeled in batches:
            items = self._compute(batch, _raw_pixels(batch.images), unlabeled)
            self._views.update(zip(self._keys(batch, unlabeled), items))

    @staticmethod
    def _keys(batch, unlabeled: bool) -> list[str]:
        return [k + UNLABELED_SUFFIX for k in batch.mad.keys] if unlabeled else batch.mad.keys

    @torch.no_grad()
    def zero_shot_classes(self, batch) -> Tensor:
        """The CLIP teacher's zero-shot class logits ``[B, C]`` of one world batch, from its
        ``images`` (as stored under ``zero_shot``; nothing is stored)."""
        return self._zero_shot(batch, self._encode_image(_raw_pixels(batch.images)))

    def _encode_image(self, raw: np.ndarray) -> TeacherImageOutput:
        from mad_distill.data.world.zero_shot import images_to_tensor

        clip = self.teachers["clip"]
        pp = getattr(clip.model.visual, "preprocess_cfg", {}) or {}
        mean, std = pp.get("mean"), pp.get("std")
        if mean is None or std is None:
            from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

            mean, std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        return clip.encode_image(images_to_tensor(raw, mean, std).to(clip.device))

    def _zero_shot(self, batch, image: TeacherImageOutput) -> Tensor:
        from mad_distill.data.world.zero_shot import group_logits

        mad = batch.mad
        cand = self.teachers["clip"].zero_shot_logits(image.pooled, mad.candidates).float().cpu()
        cls = group_logits(cand, mad.extra["candidate_groups"], self.num_classes)
        floor = cand.min(dim=1, keepdim=True).values - 1e3
        return torch.where(torch.isfinite(cls), cls, floor.expand_as(cls))

    def _compute(self, batch, raw: np.ndarray, unlabeled: bool) -> list[dict[str, Tensor]]:
        """Every teacher output of one world batch with ``uint8 [B, H, W, 3]`` pixels."""
        from mad_distill.data.world.datamodule import choice_texts

        clip = self.teachers["clip"]
        mad = batch.mad
        image = self._encode_image(raw)
        cls = self._zero_shot(batch, image)
        texts = list(mad.texts)
        if unlabeled and batch.choices is not None:
            texts = choice_texts(batch.texts, batch.choices, cls.argmax(-1))
        clip_text = clip.encode_text(texts)
        text = self.teachers["text"].encode_text(texts) if "text" in self.teachers else None
        self._grid = image.grid
        items = []
        for i in range(len(texts)):
            item = {
                "img_tokens": image.tokens[i].cpu(),
                "img_pooled": image.pooled[i].float().cpu(),
                "zero_shot": cls[i],
            }
            if image.tokens_joint is not None:
                item["img_joint"] = image.tokens_joint[i].cpu()
            if image.attention is not None:
                item["img_attention"] = image.attention[i].float().cpu()
            item.update(_text_item("clip_text", clip_text, i))
            if text is not None:
                item.update(_text_item("text", text, i))
            items.append(item)
        return items

    def outputs(self, batch: MADBatch, required: frozenset[str], device) -> MADTeacherOutputs:
        """The stored outputs of ``batch`` (every key must have been filled)."""
        if batch.keys is None:
            raise ValueError("MADBatch.keys is None: the feature store looks items up by key")
        items = [self._items.get(k, self._views.get(k)) for k in batch.keys]
        missing = [k for k, it in zip(batch.keys, items) if it is None]
        if missing:
            raise KeyError(
                f"teacher outputs not stored for {len(missing)} item(s), e.g. "
                f"{missing[0]!r}; call TeacherFeatureStore.fill(dataset) first"
            )

        def stack(name: str) -> Tensor | None:
            if name not in items[0]:
                return None
            return torch.stack([it[name] for it in items]).to(device)

        out = MADTeacherOutputs()
        if "image" in required:  # zero_shot is stored by itself
            out.image = TeacherImageOutput(
                tokens=stack("img_tokens"),
                grid=self._grid,
                pooled=stack("img_pooled"),
                tokens_joint=stack("img_joint"),
                attention=stack("img_attention"),
            )
        if "clip_text" in required:
            out.clip_text = _text_batch("clip_text", items, device)
        if "text" in required:
            out.text = _text_batch("text", items, device)
        if "zero_shot" in required:
            out.zero_shot = stack("zero_shot")
        return out


def _text_item(prefix: str, out: TeacherTextOutput, i: int) -> dict[str, Tensor]:
    n = int(out.mask[i].long().nonzero().max()) + 1 if bool(out.mask[i].any()) else 1
    item = {
        f"{prefix}/tokens": out.tokens[i, :n].cpu(),
        f"{prefix}/mask": out.mask[i, :n].bool().cpu(),
        f"{prefix}/word_ids": out.word_ids[i, :n].long().cpu(),
        f"{prefix}/pooled": out.pooled[i].float().cpu(),
    }
    for name in ("tokens_joint", "attention", "mlm_logits"):
        value = getattr(out, name)
        if value is not None:
            item[f"{prefix}/{name}"] = value[i, :n].cpu()
    return item


def _text_batch(prefix: str, items: Sequence[dict[str, Tensor]], device) -> TeacherTextOutput:
    if f"{prefix}/tokens" not in items[0]:
        raise KeyError(f"the feature store holds no {prefix!r} outputs")
    width = max(it[f"{prefix}/tokens"].shape[0] for it in items)

    def pad(name: str, value: float | int | bool) -> Tensor | None:
        key = f"{prefix}/{name}"
        if key not in items[0]:
            return None
        rows = []
        for it in items:
            t = it[key]
            extra = width - t.shape[0]
            if extra:
                t = torch.cat([t, t.new_full((extra, *t.shape[1:]), value)])
            rows.append(t)
        return torch.stack(rows).to(device)

    return TeacherTextOutput(
        tokens=pad("tokens", 0.0),
        mask=pad("mask", False),
        word_ids=pad("word_ids", -1),
        pooled=torch.stack([it[f"{prefix}/pooled"] for it in items]).to(device),
        tokens_joint=pad("tokens_joint", 0.0),
        attention=pad("attention", 0.0),
        mlm_logits=pad("mlm_logits", 0.0),
    )


#: process-wide teachers: every run of a bench reuses them
_TEACHERS: dict[tuple, dict[str, torch.nn.Module]] = {}
#: the most recent feature stores of this process, by (teachers, task, datasets)
_STORES: OrderedDict[tuple, TeacherFeatureStore] = OrderedDict()
_MAX_STORES = 4


def _store_for(teachers, n_cls: int, opts, task: str, vcr_mode: str, train_ds, unlabeled_ds):
    """The feature store of a run's datasets, filled.

    Shared only by runs on the same training (and unlabelled) items, i.e. the methods of one
    task x fraction x seed. The teacher's outputs are computed a dataset chunk at a time, and
    their last bits depend on the chunk (CPU matmul kernels vary with the shape), so a store
    shared with runs on other datasets (nested fractions, other seeds) would make a run's
    result depend on which runs its worker process did before it; measured: up to 3 points
    under domain shift.
    """
    ident = (
        opts["teacher"],
        opts.get("text_teacher"),
        opts["accelerator"],
        task,
        vcr_mode,
        train_ds.indices.tobytes(),
        None if unlabeled_ds is None else unlabeled_ds.indices.tobytes(),
    )
    store = _STORES.get(ident)
    if store is None:
        store = _STORES[ident] = TeacherFeatureStore(teachers, n_cls)
        store.fill(train_ds)
        if unlabeled_ds is not None:
            store.fill(unlabeled_ds, unlabeled=True)
        while len(_STORES) > _MAX_STORES:
            _STORES.popitem(last=False)
    _STORES.move_to_end(ident)
    return store


# ----------------------------------------------------------------------------- unlabelled inputs
#: store-key suffix of an item used as an unlabelled input (its teacher text may differ)
UNLABELED_SUFFIX = "#unlabeled"
#: run JSON ``vs_teacher`` key of the distilled (unlabelled pool) items, beside the test domains
DISTILLED_ITEMS = "distilled"
#: store-key suffix of an augmented view of an item (its teacher outputs live one step)
VIEW_SUFFIX = "#view"


def unlabeled_view(batch, module: MADMixin):
    """``batch`` as unlabelled distillation inputs: every label is the teacher's zero-shot
    prediction (:meth:`~mad_distill.mixin.MADMixin.mad_teacher_labels`), VCR's distilled text
    is the question with that choice, store keys carry :data:`UNLABELED_SUFFIX`, and the VQA
    soft scores are dropped, so nothing downstream can read the ground truth."""
    from mad_distill.data.world.datamodule import choice_texts

    keys = [k + UNLABELED_SUFFIX for k in batch.mad.keys]
    probe = dataclasses.replace(batch.mad, keys=keys, labels=None)
    labels = module.mad_teacher_labels(probe).to(batch.labels.device)
    texts = (
        batch.mad.texts
        if batch.choices is None
        else choice_texts(batch.texts, batch.choices, labels)
    )
    mad = dataclasses.replace(batch.mad, texts=list(texts), labels=labels, keys=keys)
    return dataclasses.replace(
        batch, labels=labels, mad=mad, answer_scores=None, rationale_labels=None
    )


def _concat(first, second):
    """Two world batches as one (``first``'s rows, then ``second``'s)."""

    def cat(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        if isinstance(a, Tensor):
            return torch.cat([a, b])
        if isinstance(a, list):
            return a + b
        if isinstance(a, dict):
            return {k: cat(a[k], b[k]) if k in b else a[k] for k in a}
        return a  # task / domain strings: equal

    mad = MADBatch(
        **{
            f.name: cat(getattr(first.mad, f.name), getattr(second.mad, f.name))
            for f in dataclasses.fields(first.mad)
        }
    )
    kw = {
        f.name: cat(getattr(first, f.name), getattr(second, f.name))
        for f in dataclasses.fields(first)
    }
    return type(first)(**{**kw, "mad": mad})


def _teachers(clip_spec: str, text_spec: str | None) -> dict[str, torch.nn.Module]:
    key = (clip_spec, text_spec)
    if key not in _TEACHERS:
        from mad_distill.teachers.factory import create_teacher

        _register_world_teacher()
        teachers = {"clip": create_teacher(clip_spec)}
        if text_spec:
            teachers["text"] = create_teacher(text_spec)
        for t in teachers.values():
            t.requires_grad_(False)
            t.eval()
        _TEACHERS[key] = teachers
    return _TEACHERS[key]


def _register_world_teacher() -> None:
    """The ``world-clip`` alias and the ``MAD-World-CLIP`` open_clip architecture (so a spec
    ``open_clip:MAD-World-CLIP@<file>`` of a self-pretrained teacher works too)."""
    from mad_distill.data.world.pretrain import register_model_config
    from mad_distill.data.world.teacher import register_world_teacher

    register_model_config()
    register_world_teacher()


def clear_caches() -> None:
    """Drop the process-wide teachers, feature stores and datasets (frees memory)."""
    _TEACHERS.clear()
    _STORES.clear()
    _dataset.cache_clear()
    _train_indices.cache_clear()
    pretrained_student.cache_clear()


# ----------------------------------------------------------------------------- the module
class WorldTaskModule(MADMixin, L.LightningModule):
    """The built-in student finetuned on one world task, with optional MAD.

    Args:
        task: ``vqa``, ``snli_ve`` or ``vcr`` (the world task).
        vocab_size: student word vocabulary size.
        num_classes: task classes (VQA answers, 3 SNLI-VE labels; 4 VCR choices).
        mad: a :class:`MADConfig` (or dict) to distil, or ``None`` for the baseline.
        teachers: built teachers to use instead of the config's specs (shared across runs).
        store: a :class:`TeacherFeatureStore` serving the teachers' outputs by item key.
        dim / depth / heads / patch_size / tap_layer / dropout: the student (64 px images).
        lr / weight_decay / warmup_frac / total_steps: AdamW with linear warm-up, cosine decay.
        tokenizer: the student's word tokenizer.
        init_state: pretrained student weights (all but the task head ``head.*``), e.g. from
            :func:`pretrained_student`; ``None`` starts from random weights.
        augment: the ``augment`` method option (:func:`~mad_distill.bench.augment.check_augment`):
            train on augmented views of the labelled and/or unlabelled rows; when distilling,
            the teachers see the same views (needs ``store``).
    """

    def __init__(
        self,
        task: str,
        vocab_size: int,
        num_classes: int,
        mad: MADConfig | Mapping[str, Any] | None = None,
        teachers: Mapping[str, torch.nn.Module] | None = None,
        store: TeacherFeatureStore | None = None,
        *,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        patch_size: int = 16,
        tap_layer: int = -1,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_frac: float = 0.1,
        total_steps: int = 1000,
        tokenizer: WordTokenizer | None = None,
        init_state: Mapping[str, Tensor] | None = None,
        augment: Mapping[str, Any] | None = None,
        pseudo_labels: float = 0.0,
    ) -> None:
        super().__init__()
        self.augment = check_augment(augment, unlabeled=1.0)
        self.pseudo_labels = float(pseudo_labels)
        self._policy = None if augment is None else create_augmentation(self.augment["kind"])
        if self.augment is not None and mad is not None and store is None:
            raise ValueError("augment: distilling on augmented views needs a TeacherFeatureStore")
        self.task = task
        self.num_classes = num_classes
        self.tokenizer = tokenizer
        self.student = BuiltinVLStudent(
            vocab_size,
            num_classes=num_classes,
            task="multiple_choice" if task == "vcr" else "classify",
            image_size=64,
            patch_size=patch_size,
            dim=dim,
            depth=depth,
            heads=heads,
            dropout=dropout,
            tap_layer=tap_layer,
        )
        if init_state is not None:
            try:
                missing, unexpected = self.student.load_state_dict(dict(init_state), strict=False)
            except RuntimeError as err:  # shape mismatches
                raise ValueError(f"init_state does not fit the student: {err}") from err
            missing = [k for k in missing if not k.startswith("head.")]
            if missing or unexpected:
                raise ValueError(
                    f"init_state does not fit the student: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}"
                )
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_frac, self.total_steps = warmup_frac, total_steps
        self.store = store
        self.distill = mad is not None
        if mad is not None:
            if isinstance(mad, Mapping):
                mad = MADConfig.from_dict(mad)
            if teachers is not None:
                mad = MADConfig.from_dict({**mad.to_dict(), "teachers": dict(teachers)})
            self.configure_mad(mad, student_dim=self.student.hidden_dim)
        self._correct: dict[int, list[float]] = {}
        self._pairs: dict[int, list[list[int]]] = {}  # SNLI-VE test items: [true, predicted]
        self._qtypes: dict[int, list[str]] = {}  # question type per test item
        # distilling runs: [student score, teacher score, same answer] per test item
        self._vs_teacher: dict[int, list[list[float]]] = {}

    # ---------------------------------------------------------------- MAD override point
    def mad_teacher_outputs(self, batch: MADBatch, required: frozenset[str]) -> MADTeacherOutputs:
        if self.store is not None:
            return self.store.outputs(batch, required, self.device)
        return super().mad_teacher_outputs(batch, required)

    # ---------------------------------------------------------------- forward
    def _inputs(self, batch) -> dict[str, Tensor]:
        tok = self.tokenizer
        images = normalize_images(batch.images)
        if self.task == "vcr":
            b, k = len(batch.texts), len(batch.choices[0])
            flat_t = [t for t in batch.texts for _ in range(k)]
            flat_c = [c for cs in batch.choices for c in cs]
            # the student reads "text choice" as one segment so its word ids index
            # split_words(text + " " + choice), the text the teachers read for the true choice
            enc = tok([f"{t} {c}" for t, c in zip(flat_t, flat_c)], device=self.device)
            enc = {n: v.view(b, k, -1) for n, v in enc.items()}
            return {"images": images, **enc, "token_choice": batch.labels}
        enc = tok(list(batch.texts), device=self.device)
        return {"images": images, **enc}

    def forward(self, batch):
        return self.student(**self._inputs(batch))

    def _task_loss(self, logits: Tensor, batch) -> Tensor:
        if self.task == "vqa" and batch.answer_scores is not None:
            # soft targets: the annotators' answer distribution (VQA v2 practice)
            target = batch.answer_scores / batch.answer_scores.sum(1, keepdim=True).clamp(min=1e-6)
            return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        return F.cross_entropy(logits.float(), batch.labels)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        # a mapping {"labeled": ..., "unlabeled": ...} when the method also distils on
        # unlabelled inputs: one forward over both, the task loss on the labelled rows only
        labeled = batch["labeled"] if isinstance(batch, Mapping) else batch
        unlabeled = batch.get("unlabeled") if isinstance(batch, Mapping) else None
        if unlabeled is not None and not self.distill:
            unlabeled = None
        if self.augment is not None:
            views = []
            if self.augment["labeled"]:
                labeled = self._view(labeled)
                views.append((labeled, False))
            if unlabeled is not None and self.augment["unlabeled"]:
                unlabeled = self._view(unlabeled)
                views.append((unlabeled, True))
            if self.distill:
                self.store.set_views(views)
        if unlabeled is not None:
            unlabeled = unlabeled_view(unlabeled, self)
            batch = _concat(labeled, unlabeled)
        else:
            batch = labeled
        out = self(batch)
        b = len(labeled)
        loss = self._task_loss(out.logits[:b], labeled)
        self.log("task", loss, prog_bar=True, batch_size=b)
        if self.pseudo_labels and unlabeled is not None:
            # unlabeled_view put the teacher's answers in .labels (and dropped VQA's scores)
            pseudo = self._task_loss(out.logits[b:], unlabeled)
            self.log("pseudo", pseudo, batch_size=len(unlabeled))
            loss = loss + self.pseudo_labels * pseudo
        if self.distill:
            loss = loss + self.mad_loss(batch.mad, out.tokens)
        return loss

    def _view(self, batch):
        """``batch`` with each image augmented on its own and keys unique to the view."""
        images = augment_images(batch.images, self._policy).float().div_(255.0)
        mad = dataclasses.replace(batch.mad, keys=[k + VIEW_SUFFIX for k in batch.mad.keys])
        return dataclasses.replace(batch, images=images, mad=mad)

    def _score(self, pred: Tensor, batch) -> Tensor:
        if self.task == "vqa" and batch.answer_scores is not None:
            return batch.answer_scores.gather(1, pred.unsqueeze(1)).squeeze(1).float()
        return (pred == batch.labels).float()

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        pred = self(batch).logits.argmax(-1)
        self._correct.setdefault(dataloader_idx, []).extend(self._score(pred, batch).tolist())
        self._qtypes.setdefault(dataloader_idx, []).extend(batch.qtypes)
        if self.task == "snli_ve":
            pairs = torch.stack([batch.labels, pred], 1).tolist()
            self._pairs.setdefault(dataloader_idx, []).extend(pairs)
        if self.store is not None:
            self._record_vs_teacher(pred, batch, dataloader_idx)

    def _record_vs_teacher(self, pred: Tensor, batch, dataloader_idx: int) -> None:
        """The teacher's zero-shot prediction on the same test items, scored like the
        student's; with ``class_groups`` both are scored by group (SNLI-VE: does the
        hypothesis hold), the judgement the teacher distils."""
        t_logits = self.store.zero_shot_classes(batch).to(pred.device)
        t_pred = self._mad_teacher_argmax(t_logits)
        groups = self.mad_config.class_groups
        if groups is None:
            s_score, t_score = self._score(pred, batch), self._score(t_pred, batch)
            agree = pred == t_pred
        else:
            g = torch.tensor(groups, device=pred.device)
            truth = g[batch.labels.to(pred.device)]
            s_score, t_score = g[pred] == truth, g[t_pred] == truth
            agree = g[pred] == g[t_pred]
        rows = torch.stack([s_score.float(), t_score.float(), agree.float()], 1).cpu()
        self._vs_teacher.setdefault(dataloader_idx, []).extend(rows.tolist())

    def vs_teacher(self) -> dict[int, dict[str, Any]]:
        """Distilling runs: the student against its teacher's zero-shot answers on the test
        items, per test dataloader, in % of the items: ``student`` and ``teacher`` accuracy,
        ``agreement`` (same answer: the distillation's fidelity), ``teacher_only`` (points the
        teacher scores and the student does not) and ``student_only`` (the reverse), so
        ``student = teacher - teacher_only + student_only``; the same per question type under
        ``by_type``. With ``class_groups`` all of it is at the group level."""
        out = {}
        for i, rows in self._vs_teacher.items():
            arr = np.array(rows, dtype=np.float64)
            by_type = _split_by_type(arr, self._qtypes[i])
            out[i] = {
                **_vs_teacher_summary(arr),
                "by_type": {q: _vs_teacher_summary(v) for q, v in by_type.items()},
            }
        return out

    def accuracies(self) -> dict[int, float]:
        """Accuracy in percent per test dataloader (VQA: mean soft score of the prediction)."""
        return {i: 100.0 * float(np.mean(v)) for i, v in self._correct.items()}

    def accuracies_by_type(self) -> dict[int, dict[str, float]]:
        """Accuracy in percent per question type (``colour``, ``count``, ...) per test
        dataloader: where a student's errors sit, beside the teacher's ``type/*`` zero-shot
        accuracies (:func:`~mad_distill.data.world.zero_shot.zero_shot_accuracy`)."""
        return {
            i: {
                q: 100.0 * float(v.mean())
                for q, v in _split_by_type(np.array(correct), self._qtypes[i]).items()
            }
            for i, correct in self._correct.items()
        }

    def confusions(self) -> dict[int, list[list[int]]]:
        """SNLI-VE only: the confusion matrix per test dataloader, ``[true][predicted]`` counts
        in :data:`~mad_distill.data.world.tasks.SNLI_LABELS` order (other tasks: empty)."""
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        out = {}
        for i, pairs in self._pairs.items():
            true, pred = torch.tensor(pairs).unbind(1)
            out[i] = multiclass_confusion_matrix(pred, true, self.num_classes).tolist()
        return out

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            decay_param_groups(self.named_parameters(), self.weight_decay), lr=self.lr
        )
        total = max(1, self.total_steps)
        warmup = int(self.warmup_frac * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _split_by_type(values: np.ndarray, qtypes: Sequence[str]) -> dict[str, np.ndarray]:
    """The rows of ``values`` (one per test item) per question type, types sorted."""
    qtypes = np.array(qtypes)
    return {q: values[qtypes == q] for q in sorted(set(qtypes))}


def _vs_teacher_summary(rows: np.ndarray) -> dict[str, float]:
    """``rows [n, 3]`` of (student score, teacher score, same answer) -> the % of
    :meth:`WorldTaskModule.vs_teacher`."""
    s, t, agree = rows.T
    return {
        "student": 100.0 * float(s.mean()),
        "teacher": 100.0 * float(t.mean()),
        "agreement": 100.0 * float(agree.mean()),
        "teacher_only": 100.0 * float(np.clip(t - s, 0, None).mean()),
        "student_only": 100.0 * float(np.clip(s - t, 0, None).mean()),
    }


# ----------------------------------------------------------------------------- the runner
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep Lightning's per-fit chatter (GPU/TPU banners, worker hints) out of the logs."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*deterministic.*")
        # Lightning 2.6 on torch 2.14 warns about its own pytree use on every fit
        warnings.filterwarnings("ignore", message=".*treespec.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
        try:
            yield
        finally:
            for lg, lvl in zip(loggers, levels):
                lg.setLevel(lvl)


def resolve_train(bench_train: Mapping[str, Any]) -> dict[str, Any]:
    """Everything in ``bench.train`` that determines a result, for the harness' fingerprints:
    the options after defaults plus the SHA-256 of the packaged teacher / student they name."""
    opts = train_options(bench_train)
    if opts["accelerator"] == "cpu":
        # the option came after 491 committed CPU runs: its default leaves their fingerprints
        # as they were, so they are still recognised as finished
        del opts["accelerator"]
    return {**opts, **_file_identities(opts)}


def _file_identities(opts: Mapping[str, Any]) -> dict[str, str]:
    """``{"teacher_sha256", "student_sha256"}`` of the weights files the ``teacher`` /
    ``student`` options of ``opts`` name (those present and naming a file)."""
    from mad_distill.data.world.student_pretrain import WORLD_STUDENT_WEIGHTS
    from mad_distill.data.world.teacher import (
        WORLD_CLIP_ALIAS,
        WORLD_CLIP_CHECKSUM,
        checksum_path,
        sha256_file,
    )
    from mad_distill.teachers.factory import parse_teacher_spec

    out = {}
    teacher, student = opts.get("teacher"), opts.get("student")
    if teacher == WORLD_CLIP_ALIAS:
        out["teacher_sha256"] = json.loads(Path(WORLD_CLIP_CHECKSUM).read_text())["sha256"]
    if isinstance(student, str) and student != "scratch":
        weights = WORLD_STUDENT_WEIGHTS if student == "world-vl" else student
        out["student_sha256"] = json.loads(Path(checksum_path(weights)).read_text())["sha256"]
    if isinstance(teacher, str) and teacher.startswith("open_clip:"):
        # a weights file named by path: its content, not its name, decides a run's result
        weights = Path(parse_teacher_spec(teacher).pretrained or "").expanduser()
        if weights.is_file():  # as the teacher loader reads it
            out["teacher_sha256"] = sha256_file(weights)
    return out


def _run_options(run, bench) -> tuple[str, str, Any, dict[str, Any], dict[str, Any]]:
    """``(world task, VCR mode, method config for the run's task, its method options, train
    options)`` of one run; a bad field raises ``ValueError`` naming it."""
    from mad_distill.data.world.render import check_domain

    world_task, vcr_mode = check_task(run.task)
    check_domain(bench.train_domain)
    for d in bench.test_domains:
        check_domain(d)
    method_cfg = bench.methods[run.method]
    method_options(method_cfg)  # names a bad per_task before it is applied
    method_cfg = method_for_task(method_cfg, run.task)
    method_opts = method_options(method_cfg)
    try:
        opts = train_options(_merge(bench.train, method_opts["train"]))
    except ValueError as err:
        if not method_opts["train"]:
            raise
        raise ValueError(f"method {run.method!r} train: {err}") from None
    if opts["accelerator"] == "cuda" and not torch.cuda.is_available():
        # no silent fallback to the CPU: its results differ
        raise ValueError("train.accelerator is 'cuda' but torch.cuda.is_available() is False")
    return world_task, vcr_mode, method_cfg, method_opts, opts


def run_settings(run, bench) -> dict[str, Any]:
    """What one run trains and tests with, however its grid spells it: the bench's and the
    method's ``train`` options merged (a method's ``tap_layer`` applied; the teachers and the
    file checksums only when it distils), the method's runner options that act (``augment``
    with its defaults; ``unlabeled`` / ``pseudo_labels`` only when distilling), the MAD config,
    the task, fraction and domains; not the seed or the method's name. Two runs with equal
    settings and seed train the same student, so seeds of one setting found in two grids can
    be read together (``benchmarks/compare_world.py --fresh``)."""
    _, _, method_cfg, method_opts, opts = _run_options(run, bench)
    opts = dict(opts)
    if method_opts["tap_layer"] is not None:
        opts["tap_layer"] = method_opts["tap_layer"]
    distill = method_cfg is not None and method_opts["distill"]
    unlabeled = method_opts["unlabeled"] if distill else 0.0
    mad = None
    if distill:
        mad = mad_config_for(method_cfg, opts, run.task).to_dict(serializable=True)
        opts.update(_file_identities(opts))
    else:
        for name in ("teacher", "text_teacher"):
            opts.pop(name)
        opts.update(_file_identities({"student": opts["student"]}))
    augment = check_augment(method_opts["augment"], unlabeled=1.0)
    if augment is not None and not unlabeled:
        augment["unlabeled"] = False  # no unlabelled rows to augment
    return {
        "task": run.task,
        "fraction": float(run.fraction),
        "train_domain": bench.train_domain,
        "test_domains": list(bench.test_domains),
        "train": opts,
        "augment": augment,
        "unlabeled": unlabeled,
        "pseudo_labels": method_opts["pseudo_labels"] if distill else 0.0,
        "mad": mad,
    }


def check_run(run, bench) -> None:
    """Check one run's configuration without running it: what :func:`run_world` would reject
    first (task, domains, method and train options, the MAD config). The harness checks every
    run of a bench this way before it starts any, so a bad field in the last method of a grid
    fails in seconds, not after hours of runs."""
    _, _, method_cfg, method_opts, opts = _run_options(run, bench)
    if method_cfg is not None and method_opts["distill"]:
        mad_config_for(method_cfg, opts, run.task)


def run_world(run, bench) -> dict:
    """Finetune and test one run of a bench on the embedded world.

    Args:
        run: the :class:`~mad_distill.bench.harness.RunSpec` (task, method, fraction, seed).
        bench: the :class:`~mad_distill.bench.harness.BenchConfig` (domains, methods, train).

    Returns:
        ``{"metrics": {test_domain: accuracy %}, "train_size", "steps", "teacher", ...}``.
    """
    from mad_distill.data.world.tasks import num_classes

    world_task, vcr_mode, method_cfg, method_opts, opts = _run_options(run, bench)
    if RUNTIME["threads"]:
        torch.set_num_threads(int(RUNTIME["threads"]))
    t0, cpu0 = time.perf_counter(), time.process_time()

    def train_split(fraction: float):
        """The nested training-pool fraction of this run's seed, on the training domain."""
        idx = _train_indices(
            world_task, fraction, int(run.seed), opts["pool_size"], opts["world_seed"], vcr_mode
        )
        return _dataset(world_task, bench.train_domain, "train", idx, opts["world_seed"], vcr_mode)

    train_ds = train_split(float(run.fraction))
    test_idx = tuple(range(opts["test_size"]))
    test_ds = [
        _dataset(world_task, d, "test", test_idx, opts["world_seed"], vcr_mode)
        for d in bench.test_domains
    ]
    n_cls = num_classes(world_task)
    unlabeled = method_opts["unlabeled"]
    mad = teachers = store = None
    # labels dropped: see unlabeled_view
    unlabeled_ds = train_split(float(unlabeled)) if unlabeled else None
    if method_cfg is not None and method_opts["distill"]:
        mad = mad_config_for(method_cfg, opts, run.task)
        teachers = _teachers(opts["teacher"], opts.get("text_teacher"))
        for t in teachers.values():
            # the store computes on the run's device (Lightning moves the module, and with it
            # the teachers, only at fit)
            t.to(opts["accelerator"])
        store = _store_for(teachers, n_cls, opts, world_task, vcr_mode, train_ds, unlabeled_ds)
    t_teacher = time.perf_counter() - t0

    steps_per_epoch = math.ceil(len(train_ds) / opts["batch_size"])
    total = min(max(opts["epochs"] * steps_per_epoch, opts["min_steps"]), opts["max_steps"])
    if opts["student"] == "scratch":
        init_state, tokenizer = None, world_tokenizer(opts["world_seed"])
    else:
        init_state, _, tokenizer = pretrained_student(opts["student"])
    L.seed_everything(run.seed, workers=True, verbose=False)
    module = WorldTaskModule(
        world_task,
        len(tokenizer),
        n_cls,
        mad=mad,
        teachers=teachers,
        store=store,
        dim=opts["dim"],
        depth=opts["depth"],
        heads=opts["heads"],
        patch_size=opts["patch_size"],
        tap_layer=opts["tap_layer"]
        if method_opts["tap_layer"] is None
        else method_opts["tap_layer"],
        dropout=opts["dropout"],
        lr=opts["lr"],
        weight_decay=opts["weight_decay"],
        warmup_frac=opts["warmup_frac"],
        total_steps=total,
        tokenizer=tokenizer,
        init_state=init_state,
        augment=method_opts["augment"],
        pseudo_labels=method_opts["pseudo_labels"],
    )
    with _quiet():
        trainer = L.Trainer(
            max_steps=total,
            max_epochs=-1,
            accelerator=opts["accelerator"],
            devices=1,
            deterministic=bool(opts["deterministic"]),
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=bool(RUNTIME["progress_bar"]),
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        loader = _loader(train_ds, opts["batch_size"], True, run.seed)
        if unlabeled_ds is not None:
            # cycles the labelled loader (reshuffled each pass) beside the unlabelled one
            loader = CombinedLoader(
                {
                    "labeled": loader,
                    "unlabeled": _loader(unlabeled_ds, opts["batch_size"], True, run.seed + 1),
                },
                mode="max_size_cycle",
            )
        trainer.fit(module, train_dataloaders=loader)
        t_fit = time.perf_counter() - t0 - t_teacher
        eval_ds = list(test_ds)
        if store is not None and unlabeled_ds is not None:
            # how closely the student follows its teacher on items it was distilled on, beside
            # the test items: the first test_size items of the unlabelled pool
            idx = _train_indices(
                world_task,
                float(unlabeled),
                int(run.seed),
                opts["pool_size"],
                opts["world_seed"],
                vcr_mode,
            )[: opts["test_size"]]
            eval_ds.append(
                _dataset(world_task, bench.train_domain, "train", idx, opts["world_seed"], vcr_mode)
            )
        trainer.test(
            module,
            dataloaders=[_loader(ds, 256, False, 0) for ds in eval_ds],
            verbose=False,
        )
    acc = module.accuracies()
    by_type = module.accuracies_by_type()
    extra = {}
    if confusion := module.confusions():
        extra["confusion"] = {d: confusion[i] for i, d in enumerate(bench.test_domains)}
    if vs_teacher := module.vs_teacher():
        names = [*bench.test_domains, DISTILLED_ITEMS][: len(vs_teacher)]
        extra["vs_teacher"] = {d: _round_nested(vs_teacher[i], 3) for i, d in enumerate(names)}
    return {
        **extra,
        "metrics": {d: round(acc[i], 3) for i, d in enumerate(bench.test_domains)},
        "by_type": {
            d: {q: round(v, 3) for q, v in by_type[i].items()}
            for i, d in enumerate(bench.test_domains)
        },
        "train_size": len(train_ds),
        "unlabeled_size": len(unlabeled_ds) if unlabeled_ds is not None else 0,
        "steps": total,
        "teacher": opts["teacher"] if mad is not None else None,
        "student": opts["student"],
        "device": _device_name(opts["accelerator"]),
        "mad_config": mad.to_dict(serializable=True) if mad is not None else None,
        "timing": {
            "teacher_s": round(t_teacher, 2),
            "fit_s": round(t_fit, 2),
            "test_s": round(time.perf_counter() - t0 - t_teacher - t_fit, 2),
            # CPU seconds of this process: the wall time on an otherwise idle machine
            "cpu_s": round(time.process_time() - cpu0, 2),
        },
    }


def _device_name(accelerator: str) -> str:
    """What a run trained on, for its JSON: ``cpu`` or ``cuda:<GPU name>``."""
    if accelerator == "cuda":
        return f"cuda:{torch.cuda.get_device_name()}"
    return "cpu"


def _round_nested(value: Any, digits: int) -> Any:
    if isinstance(value, Mapping):
        return {k: _round_nested(v, digits) for k, v in value.items()}
    return round(value, digits)


def method_for_task(method_cfg: Mapping[str, Any] | None, task: str) -> Any:
    """The part of a bench method that applies to ``task`` (what its runs use):
    ``per_task[task]`` merged in (``per_task`` dropped), and ``class_groups`` reduced to the
    task's entry (dropped when it has none), so a setting for one task does not rerun the
    others. An invalid method is returned as it is: the run itself reports it."""
    if isinstance(method_cfg, Mapping) and "per_task" in method_cfg:
        per_task = method_cfg["per_task"]
        if not isinstance(per_task, Mapping) or not isinstance(per_task.get(task, {}), Mapping):
            return method_cfg
        rest = {k: v for k, v in method_cfg.items() if k != "per_task"}
        method_cfg = _merge(rest, per_task.get(task, {}))
    if not isinstance(method_cfg, Mapping) or "class_groups" not in method_cfg:
        return method_cfg
    out = {k: v for k, v in method_cfg.items() if k != "class_groups"}
    groups = method_cfg["class_groups"]
    if isinstance(groups, Mapping) and task in groups:
        out["class_groups"] = {task: groups[task]}
    elif not isinstance(groups, Mapping):
        out["class_groups"] = groups
    return out


def resolve_method(method_cfg: Mapping[str, Any] | None, task: str) -> Any:
    """What the harness fingerprints of a method's ``task`` runs: :func:`method_for_task`, with
    the SHA-256 of the weights files its own ``train`` options name (as for ``bench.train``)."""
    method_cfg = method_for_task(method_cfg, task)
    if isinstance(method_cfg, Mapping) and isinstance(method_cfg.get("train"), Mapping):
        over = dict(method_cfg["train"])
        with contextlib.suppress(OSError, ValueError, KeyError):  # the run itself reports it
            over.update(_file_identities(over))
        method_cfg = {**method_cfg, "train": over}
    return method_cfg


# the harness fingerprints runs with the resolved options (defaults + packaged file checksums)
# and the part of each method that applies to the run's task
run_world.resolve_train = resolve_train  # type: ignore[attr-defined]
run_world.resolve_method = resolve_method  # type: ignore[attr-defined]
# ... and checks every run's configuration before it starts any
run_world.check_run = check_run  # type: ignore[attr-defined]

__all__ = [
    "ACCELERATORS",
    "TASK_VARIANTS",
    "TRAIN_DEFAULTS",
    "TeacherFeatureStore",
    "WorldTaskModule",
    "check_run",
    "clear_caches",
    "mad_config_for",
    "method_for_task",
    "pretrained_student",
    "resolve_method",
    "resolve_train",
    "run_settings",
    "run_world",
    "set_runtime",
    "train_options",
    "world_tokenizer",
]
