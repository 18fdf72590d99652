"""Shared machinery of the real-data readers (VQA v2, SNLI-VE, VCR).

- :class:`RecordError` / :class:`ReadReport`: every bad record is named by file and line (or JSON
  path); with ``on_error="skip"`` it is skipped, counted by reason and reported once at the end.
- :class:`JsonlIndex`: a byte-offset index over a ``.jsonl`` file, so a dataset keeps only offsets
  (plus a few small fields) in memory and parses a record when it is asked for.
- :class:`TaskSample` / :class:`TaskBatch` / :class:`TaskCollator`: the one sample structure all
  readers yield, and the collate function that turns samples into the student's inputs plus a
  :class:`~mad_distill.types.MADBatch` for the teachers.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from mad_distill.types import MADBatch

log = logging.getLogger("mad_distill.data")

OnError = Literal["raise", "skip"]
_ON_ERROR = ("raise", "skip")

#: how many skipped-record messages a :class:`ReadReport` keeps verbatim
_MAX_EXAMPLES = 20


class RecordError(ValueError):
    """A bad record: malformed, missing a field, an unknown label, or a missing image.

    Args:
        reason: a short category used for counting (``"malformed"``, ``"missing_field"``,
            ``"unknown_label"``, ``"missing_image"``, ``"bad_value"``).
        where: ``"path:line N"`` or ``"path:questions[i]"``.
        message: what is wrong.
    """

    def __init__(self, reason: str, where: str, message: str) -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{where}: {message}")


class RecordFileNotFoundError(RecordError, FileNotFoundError):
    """A record whose image (or metadata file) does not exist; also a ``FileNotFoundError``."""


def check_on_error(on_error: str) -> OnError:
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
    return on_error  # type: ignore[return-value]


@dataclass
class ReadReport:
    """What a reader kept and skipped. ``str(report)`` is the one log line."""

    source: str
    n_read: int = 0
    n_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_skip(self, err: RecordError) -> None:
        self.skipped[err.reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(str(err))

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read": self.n_read,
            "kept": self.n_kept,
            "skipped": self.n_skipped,
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "examples": list(self.examples),
        }

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        tail = f" ({reasons})" if reasons else ""
        return (
            f"{self.source}: kept {self.n_kept}/{self.n_read} records, "
            f"skipped {self.n_skipped}{tail}"
        )

    def log(self) -> None:
        (log.warning if self.n_skipped else log.info)("%s", self)


class ErrorPolicy:
    """Applies ``on_error`` to :class:`RecordError` s raised while indexing, filling a report."""

    def __init__(self, on_error: str, report: ReadReport) -> None:
        self.on_error = check_on_error(on_error)
        self.report = report

    def handle(self, err: RecordError) -> None:
        if self.on_error == "raise":
            raise err
        self.report.add_skip(err)


# ---------------------------------------------------------------------------------------------
# record field access with located errors


def require(record: Any, key: str, where: str, types: type | tuple[type, ...] | None = None) -> Any:
    """``record[key]``, or a :class:`RecordError` naming ``where`` and the missing/bad field."""
    if not isinstance(record, dict):
        raise RecordError(
            "malformed", where, f"expected a JSON object, got {type(record).__name__}"
        )
    if key not in record:
        raise RecordError("missing_field", where, f"missing field {key!r}")
    value = record[key]
    if types is not None and (not isinstance(value, types) or isinstance(value, bool)):
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise RecordError(
            "bad_value", where, f"field {key!r} must be {want}, got {type(value).__name__}"
        )
    return value


def check_file(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def check_dir(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} is not a directory: {p}")
    return p


def load_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a whole JSON document; a syntax error names the file, line and column."""
    p = check_file(path, what)
    with open(p, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{p}:line {e.lineno} column {e.colno}: malformed JSON ({e.msg})"
            ) from None


class ImageChecker:
    """Memoised ``is_file`` so an image shared by many records is stat-ed once."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._seen: dict[str, bool] = {}

    def check(self, path: str, where: str) -> None:
        if not self.enabled:
            return
        ok = self._seen.get(path)
        if ok is None:
            ok = self._seen[path] = os.path.isfile(path)
        if not ok:
            raise RecordFileNotFoundError("missing_image", where, f"image not found: {path}")


def load_image(path: str, where: str) -> Image.Image:
    """Open an image lazily (one per item) as RGB; errors name the image and the record."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise RecordFileNotFoundError("missing_image", where, f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise RecordError("bad_image", where, f"cannot read image {path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# jsonl index


class JsonlIndex:
    """Byte offsets of the good records of a ``.jsonl`` file.

    The file is scanned once; ``validate(record, where)`` is called on each parsed line and
    returns the small per-record info the dataset keeps in memory (labels, domain fields) or
    raises :class:`RecordError`. :meth:`read` re-parses one record on demand, so memory holds
    offsets, not records. File handles are per process (safe with DataLoader workers).

    Args:
        path: the ``.jsonl`` file.
        validate: ``(record, where) -> info``.
        policy: what to do with a bad record.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        validate: Callable[[dict, str], Any],
        policy: ErrorPolicy,
    ) -> None:
        self.path = check_file(path, "jsonl file")
        self.offsets: list[int] = []
        self.lines: list[int] = []
        self.infos: list[Any] = []
        self._fh: Any = None
        self._pid: int | None = None
        report = policy.report
        with open(self.path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue  # blank lines (e.g. a trailing newline) are not records
                report.n_read += 1
                where = f"{self.path}:line {lineno}"
                try:
                    try:
                        record = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise RecordError("malformed", where, f"malformed JSON ({e})") from None
                    info = validate(record, where)
                except RecordError as err:
                    policy.handle(err)
                    continue
                self.offsets.append(start)
                self.lines.append(lineno)
                self.infos.append(info)
                report.n_kept += 1

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, i: int) -> str:
        return f"{self.path}:line {self.lines[i]}"

    def read(self, i: int) -> dict:
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open for the dataset's life
            self._pid = os.getpid()
        self._fh.seek(self.offsets[i])
        return json.loads(self._fh.readline())

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"] = None  # file handles do not pickle (DataLoader workers with spawn)
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


# ---------------------------------------------------------------------------------------------
# samples, batches, collate


@dataclass
class TaskSample:
    """One example of any task, as every reader yields it.

    Args:
        key: stable example id (``"vqa:<question_id>"``, ``"snli_ve:<pairID>"``,
            ``"vcr:<annot_id>:q2a"``).
        image: the RGB image (loaded when the item is requested).
        text: the text the student reads (question / hypothesis / question + answer).
        label: index of the right class or candidate; -1 when unknown (test splits, or a VQA
            question none of whose answers is in the vocabulary).
        candidates: this example's candidate texts for the teacher's zero-shot scores (VCR: the 4
            rendered choices; SNLI-VE: the 3 label prompts), or None when the dataset's candidates
            are shared by all examples (VQA: the answer vocabulary).
        choices: the student's multiple-choice options (VCR: the 4 rendered choices), else None.
        target: ``[C]`` float soft target (VQA), else None.
        boxes: ``[K, 4]`` float ``x1, y1, x2, y2`` in pixels of ``image`` (VCR detections), else
            None.
        meta: task-specific extras (answer type, domain fields, raw answers, object names ...).
    """

    key: str
    image: Image.Image
    text: str
    label: int
    candidates: list[str] | None = None
    choices: list[str] | None = None
    target: Tensor | None = None
    boxes: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskBatch:
    """A collated batch: the student's inputs, the teachers' :class:`MADBatch`, and the labels.

    Args:
        inputs: the student's inputs. Always ``texts`` (``B`` strings); ``pixel_values``
            ``[B, 3, H, W]`` when an ``image_transform`` is given, else ``images`` (``B`` PIL
            images); ``choices`` (``B`` lists of ``C`` strings) for multiple-choice tasks;
            ``boxes`` (``B`` tensors ``[K_b, 4]``) for VCR; plus whatever ``text_processor``
            returned.
        mad: the raw inputs the teachers need.
        labels: ``[B]`` long, -1 where unknown.
        targets: ``[B, C]`` float soft targets (VQA), else None.
        keys: ``B`` example ids.
        meta: ``B`` dicts of task extras (for metrics: raw answers, answer types, ...).
    """

    inputs: dict[str, Any]
    mad: MADBatch
    labels: Tensor
    targets: Tensor | None
    keys: list[str]
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> TaskBatch:
        def move(v: Any) -> Any:
            if isinstance(v, Tensor):
                return v.to(device)
            if isinstance(v, list) and v and all(isinstance(x, Tensor) for x in v):
                return [x.to(device) for x in v]
            if isinstance(v, dict):
                return {k: move(x) for k, x in v.items()}
            return v

        return TaskBatch(
            inputs=move(self.inputs),
            mad=self.mad.to(device),
            labels=self.labels.to(device),
            targets=None if self.targets is None else self.targets.to(device),
            keys=self.keys,
            meta=self.meta,
        )


class TaskCollator:
    """Collate :class:`TaskSample` s into a :class:`TaskBatch` (use as a DataLoader ``collate_fn``).

    Args:
        image_transform: PIL image -> ``[3, H, W]`` tensor for the student (e.g. a ViLT or
            torchvision transform); None keeps the PIL images in ``inputs["images"]``.
        teacher_transform: PIL image -> ``[3, H, W]`` tensor for the image teacher (e.g. open_clip's
            ``preprocess``); None leaves ``MADBatch.teacher_images`` empty (teacher-feature cache).
        text_processor: ``(texts, choices) -> dict`` of extra student inputs (e.g. a tokenizer
            call); ``choices`` is None for single-text tasks.
        shared_candidates: candidate texts shared by every example (VQA answer prompts); used when
            the samples carry no per-example candidates.
    """

    def __init__(
        self,
        image_transform: Callable[[Image.Image], Tensor] | None = None,
        teacher_transform: Callable[[Image.Image], Tensor] | None = None,
        text_processor: Callable[[list[str], list[list[str]] | None], dict[str, Any]] | None = None,
        shared_candidates: Sequence[str] | None = None,
    ) -> None:
        self.image_transform = image_transform
        self.teacher_transform = teacher_transform
        self.text_processor = text_processor
        self.shared_candidates = None if shared_candidates is None else list(shared_candidates)

    def __call__(self, samples: Sequence[TaskSample]) -> TaskBatch:
        if len(samples) == 0:
            raise ValueError("TaskCollator got an empty list of samples")
        texts = [s.text for s in samples]
        inputs: dict[str, Any] = {"texts": texts}
        if self.image_transform is not None:
            inputs["pixel_values"] = torch.stack([self.image_transform(s.image) for s in samples])
        else:
            inputs["images"] = [s.image for s in samples]
        has_choices = [s.choices is not None for s in samples]
        if any(has_choices) and not all(has_choices):
            raise ValueError("TaskCollator: some samples have choices and some do not")
        choices = [list(s.choices) for s in samples] if all(has_choices) else None  # type: ignore[arg-type]
        if choices is not None:
            inputs["choices"] = choices
        if samples[0].boxes is not None:
            inputs["boxes"] = [s.boxes for s in samples]
        if self.text_processor is not None:
            inputs.update(self.text_processor(texts, choices))

        teacher_images = None
        if self.teacher_transform is not None:
            teacher_images = torch.stack([self.teacher_transform(s.image) for s in samples])

        per_example = [s.candidates is not None for s in samples]
        if all(per_example):
            candidates: list[list[str]] | list[str] | None = [list(s.candidates) for s in samples]  # type: ignore[arg-type]
        elif not any(per_example):
            candidates = self.shared_candidates
        else:
            raise ValueError("TaskCollator: some samples have candidates and some do not")

        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        targets = None
        if samples[0].target is not None:
            targets = torch.stack([s.target for s in samples])  # type: ignore[misc]
        keys = [s.key for s in samples]
        mad = MADBatch(
            teacher_images=teacher_images,
            texts=texts,
            labels=labels,
            candidates=candidates,
            keys=keys,
            extra={} if targets is None else {"targets": targets},
        )
        return TaskBatch(
            inputs=inputs,
            mad=mad,
            labels=labels,
            targets=targets,
            keys=keys,
            meta=[s.meta for s in samples],
        )


def iter_samples(dataset: Any) -> Iterator[TaskSample]:
    """Iterate a map-style dataset in order (a convenience for tests and scripts)."""
    for i in range(len(dataset)):
        yield dataset[i]


def stable_bucket(text: str, n_buckets: int) -> int:
    """A process-independent hash bucket (Python's ``hash`` is salted per process)."""
    import hashlib

    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_buckets


def make_domain_split(
    dataset: Any,
    dataset_name: str,
    train_domains: str | Sequence[str],
    test_domains: str | Sequence[str],
    **domain_kwargs: Any,
) -> tuple[Any, Any, Any, Any]:
    """Domain-shift split of a reader: ``(train_idx, test_idx, train_manifest, test_manifest)``.

    ``dataset.domains(**domain_kwargs)`` labels every record (VQA: question groups, SNLI-VE:
    caption scenes, VCR: movie groups); :func:`mad_distill.data.splits.domain_split` picks the
    records of each side, and a :class:`~mad_distill.data.splits.SplitManifest` per side records
    how (``method="domain:<by>"``, the domain arguments in ``extra``) and the indices' SHA-256.
    Each reader module has its documented default as ``*_DOMAIN_SPLIT``.
    """
    from mad_distill.data.splits import SplitManifest, domain_split

    labels = dataset.domains(**domain_kwargs)
    train_idx, test_idx = domain_split(labels, train_domains, test_domains)
    by = domain_kwargs.get("by")
    if by is None:  # the reader's default grouping
        import inspect

        by = inspect.signature(dataset.domains).parameters["by"].default
    extra = {
        "domain_kwargs": dict(domain_kwargs),
        "reader": type(dataset).__name__,
    }
    manifests = []
    for split, idx, doms in (
        ("train", train_idx, train_domains),
        ("test", test_idx, test_domains),
    ):
        manifests.append(
            SplitManifest.from_indices(
                idx,
                dataset=dataset_name,
                split=split,
                fraction=1.0,
                seed=0,
                n_total=len(labels),
                method=f"domain:{by}",
                domains=[doms] if isinstance(doms, str) else list(doms),
                extra=extra,
            )
        )
    return train_idx, test_idx, manifests[0], manifests[1]
