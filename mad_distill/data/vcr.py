"""VCR reader: the official ``{train,val,test}.jsonl`` and the ``vcr1images`` folder, unchanged.

One line of the official annotations (Zellers et al., CVPR 2019; rowanz/r2c)::

    {"movie": "3015_CHARLIE_ST_CLOUD", "objects": ["person", "person", "person", "car"],
     "img_fn": "lsmdc_3015_CHARLIE_ST_CLOUD/3015_..._00.23.57.935-00.24.00.783@0.jpg",
     "metadata_fn": "lsmdc_3015_CHARLIE_ST_CLOUD/3015_..._00.23.57.935-00.24.00.783@0.json",
     "question": ["Does", [2], "feel", "comfortable", "?"],
     "answer_choices": [[...], [...], [...], [...]], "answer_label": 1,
     "rationale_choices": [[...], [...], [...], [...]], "rationale_label": 1,
     "annot_id": "train-0", "img_id": "train-0", ...}

Tokens are strings or lists of detection indices into ``objects``; the metadata JSON beside the
image has ``boxes`` (``[x1, y1, x2, y2, score]`` per object), ``segms``, ``width``, ``height``.

Rendering (:func:`render_tokens`): a reference becomes the object's tag, stable within the
record: people get gender-neutral names in order of appearance in ``objects`` (the list the VCR
community uses, e.g. rowanz/r2c, without its duplicated "Peyton"), other objects their class name
plus a per-class counter (``"car 1"``); a list ``[1, 3]`` becomes ``"Riley and Jackie"``.

Tasks: ``q2a`` (question -> 4 answers) and ``qa2r`` (question + the right answer -> 4 rationales)
are two 4-way problems; Q->AR is scored from both (:class:`mad_distill.metrics.VCRAccuracy`):
build one dataset per task over the same file, their items are aligned by index and annot_id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from mad_distill.data._common import (
    ErrorPolicy,
    ImageChecker,
    JsonlIndex,
    ReadReport,
    RecordError,
    RecordFileNotFoundError,
    TaskCollator,
    TaskSample,
    check_dir,
    load_image,
    require,
    stable_bucket,
)

VCRTask = Literal["q2a", "qa2r"]
_TASKS = ("q2a", "qa2r")
VCR_NUM_CHOICES = 4

#: gender-neutral names for ``person`` objects (rowanz/r2c's list, duplicate removed)
VCR_PERSON_NAMES: tuple[str, ...] = (
    "Casey", "Riley", "Jessie", "Jackie", "Avery", "Jaime", "Peyton", "Kerry", "Jody", "Kendall",
    "Skyler", "Frankie", "Pat", "Quinn",
)  # fmt: skip

VCRDomainBy = Literal["movie_hash", "source", "movie", "movie_list"]

#: the documented default domain-shift split: movies hashed into 4 groups, train on 3, test on 1
VCR_DOMAIN_SPLIT: dict[str, Any] = {
    "by": "movie_hash",
    "n_groups": 4,
    "train": ["movies_0", "movies_1", "movies_2"],
    "test": ["movies_3"],
}

# tokens written without a space before them (VCR's tokenisation splits these off)
_NO_SPACE_BEFORE = frozenset(
    {".", ",", "?", "!", ":", ";", ")", "]", "%", "'s", "n't", "'re", "'ve", "'ll", "'d", "'m"}
)
_CLITIC_AFTER_APOSTROPHE = frozenset({"s", "re", "ve", "ll", "d", "m", "t"})


def object_tags(
    objects: Sequence[str],
    person_names: Sequence[str] = VCR_PERSON_NAMES,
    object_format: str = "{name} {tag}",
) -> list[str]:
    """The text each detection is rendered as.

    The k-th ``person`` gets ``person_names[k]`` (past the list: the name again with a number,
    ``"Casey2"``); any other object gets ``object_format`` with its class and its 1-based rank
    among objects of that class.
    """
    if not person_names:
        raise ValueError("person_names must not be empty")
    tags = []
    per_class: dict[str, int] = {}
    n_person = 0
    for name in objects:
        if name == "person":
            k = n_person
            n_person += 1
            base = person_names[k % len(person_names)]
            tags.append(base if k < len(person_names) else f"{base}{k // len(person_names) + 1}")
        else:
            per_class[name] = per_class.get(name, 0) + 1
            tags.append(object_format.format(name=name, tag=per_class[name]))
    return tags


def _join_names(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def render_tokens(
    tokens: Sequence[str | Sequence[int]], tags: Sequence[str], where: str = "<tokens>"
) -> tuple[str, list[int]]:
    """Detokenised text of a VCR token list and the object indices it references (in order).

    Raises :class:`RecordError` for a token that is neither a string nor a list of valid
    detection indices.
    """
    words: list[str] = []
    refs: list[int] = []
    for tok in tokens:
        if isinstance(tok, str):
            words.append(tok)
            continue
        if not isinstance(tok, list) or not tok:
            raise RecordError("bad_value", where, f"token {tok!r} is neither text nor a reference")
        for j in tok:
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < len(tags):
                raise RecordError(
                    "bad_value",
                    where,
                    f"object reference {j!r} outside the {len(tags)} objects of this record",
                )
            if j not in refs:
                refs.append(j)
        words.append(_join_names([tags[j] for j in tok]))
    out = ""
    prev = ""
    for w in words:
        glue = (
            not out
            or w in _NO_SPACE_BEFORE
            or w == "'"
            or prev == "("
            or (prev == "'" and w in _CLITIC_AFTER_APOSTROPHE)
        )
        out += w if glue else " " + w
        prev = w
    return out, refs


def vcr_domain(
    movie: str,
    img_fn: str,
    by: VCRDomainBy = "movie_hash",
    n_groups: int = 4,
    movie_groups: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Domain label of one VCR record.

    - ``movie_hash``: ``"movies_<sha1(movie) mod n_groups>"`` (movie-disjoint groups, stable
      across machines and Python versions);
    - ``source``: the image source, the prefix of the image folder (``lsmdc`` / ``movieclips``);
    - ``movie``: the movie itself;
    - ``movie_list``: the name of the group in ``movie_groups`` listing the movie, else ``other``.
    """
    if by == "movie_hash":
        return f"movies_{stable_bucket(movie, n_groups)}"
    if by == "source":
        return img_fn.split("/", 1)[0].split("_", 1)[0]
    if by == "movie":
        return movie
    if by == "movie_list":
        if movie_groups is None:
            raise ValueError("by='movie_list' needs movie_groups {group: [movie, ...]}")
        for group, movies in movie_groups.items():
            if movie in movies:
                return group
        return "other"
    raise ValueError(f"by must be one of movie_hash/source/movie/movie_list, got {by!r}")


@dataclass(frozen=True)
class _Info:
    annot_id: str
    movie: str
    img_fn: str
    answer_label: int
    rationale_label: int


def _check_tokens(tokens: Any, n_objects: int, where: str, field: str) -> None:
    if not isinstance(tokens, list) or not tokens:
        raise RecordError("bad_value", where, f"field {field!r} must be a non-empty token list")
    for tok in tokens:
        if isinstance(tok, str):
            continue
        if not isinstance(tok, list) or not tok:
            raise RecordError("bad_value", where, f"{field}: token {tok!r} is not text or a list")
        for j in tok:
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < n_objects:
                raise RecordError(
                    "bad_value",
                    where,
                    f"{field}: object reference {j!r} outside the {n_objects} objects",
                )


def _label(rec: dict, key: str, where: str, required: bool) -> int:
    if key not in rec:
        if required:
            raise RecordError("missing_field", where, f"missing field {key!r}")
        return -1
    lab = require(rec, key, where, int)
    if not 0 <= lab < VCR_NUM_CHOICES:
        raise RecordError(
            "unknown_label", where, f"{key} {lab} is not one of 0..{VCR_NUM_CHOICES - 1}"
        )
    return lab


class VCRDataset(Dataset[TaskSample]):
    """VCR Q->A or QA->R as :class:`TaskSample` s (jsonl offsets in memory; line, image and
    metadata read per item).

    Args:
        jsonl: ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of ``vcr1annots``.
        image_dir: the ``vcr1images`` folder (``img_fn`` and ``metadata_fn`` are relative to it).
        task: ``"q2a"`` or ``"qa2r"``.
        require_labels: labels must be present (False for ``test.jsonl``: labels become -1;
            ``qa2r`` needs the answer label to condition on, so it requires labels).
        load_boxes: read the metadata file per item and return the detections' boxes.
        person_names / object_format: how object references are rendered (:func:`object_tags`).
        candidate_template: teacher prompt per choice (``{question}``: the rendered question,
            for ``qa2r`` with the right answer appended; ``{choice}``: the rendered choice).
        on_error: ``"raise"`` or ``"skip"`` (skipped records are counted in :attr:`report`).
        check_images: verify at indexing that each image (and metadata file) exists.

    Each sample: ``text`` = question (+ right answer for ``qa2r``); ``choices`` = the 4 rendered
    answers / rationales; ``candidates`` = the teacher prompts for them; ``label`` = the right
    choice; ``boxes`` = ``[K, 4]`` detections ``x1, y1, x2, y2`` (pixels); ``meta`` has
    ``annot_id, movie, img_fn, objects, tags, question_refs, choice_refs, answer_label,
    rationale_label, width, height``.
    """

    def __init__(
        self,
        jsonl: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        task: VCRTask = "q2a",
        require_labels: bool = True,
        load_boxes: bool = True,
        person_names: Sequence[str] = VCR_PERSON_NAMES,
        object_format: str = "{name} {tag}",
        candidate_template: str = "{choice}",
        on_error: str = "raise",
        check_images: bool = True,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        if task == "qa2r" and not require_labels:
            raise ValueError("task='qa2r' conditions on the right answer: require_labels=True")
        if "{choice}" not in candidate_template:
            raise ValueError(
                f"candidate_template must contain '{{choice}}', got {candidate_template!r}"
            )
        object_tags(["person", "x"], person_names, object_format)  # fail early on a bad format
        self.image_dir = check_dir(image_dir, "VCR image_dir (vcr1images)")
        self.task: VCRTask = task
        self.require_labels = require_labels
        self.load_boxes = load_boxes
        self.person_names = tuple(person_names)
        self.object_format = object_format
        self.candidate_template = candidate_template
        self._checker = ImageChecker(check_images)
        self.report = ReadReport(source=os.path.basename(os.fspath(jsonl)))
        self._index = JsonlIndex(jsonl, self._validate, ErrorPolicy(on_error, self.report))
        self.report.log()

    def _validate(self, rec: dict, where: str) -> _Info:
        movie = require(rec, "movie", where, str)
        objects = require(rec, "objects", where, list)
        if not all(isinstance(o, str) for o in objects):
            raise RecordError("bad_value", where, "field 'objects' must be a list of class names")
        img_fn = require(rec, "img_fn", where, str)
        meta_fn = require(rec, "metadata_fn", where, str)
        annot_id = require(rec, "annot_id", where, str)
        _check_tokens(require(rec, "question", where), len(objects), where, "question")
        for field in ("answer_choices", "rationale_choices"):
            choices = require(rec, field, where, list)
            if len(choices) != VCR_NUM_CHOICES:
                raise RecordError(
                    "bad_value",
                    where,
                    f"field {field!r} has {len(choices)} choices, expected {VCR_NUM_CHOICES}",
                )
            for k, c in enumerate(choices):
                _check_tokens(c, len(objects), where, f"{field}[{k}]")
        a = _label(rec, "answer_label", where, self.require_labels)
        r = _label(rec, "rationale_label", where, self.require_labels)
        self._checker.check(os.path.join(self.image_dir, img_fn), where)
        if self.load_boxes:
            self._checker.check(os.path.join(self.image_dir, meta_fn), where)
        return _Info(annot_id, movie, img_fn, a, r)

    def __len__(self) -> int:
        return len(self._index)

    def _boxes(self, rec: dict, n_objects: int, where: str) -> tuple[torch.Tensor, dict]:
        path = os.path.join(self.image_dir, rec["metadata_fn"])
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise RecordFileNotFoundError(
                "missing_image", where, f"metadata file not found: {path}"
            ) from None
        except json.JSONDecodeError as e:
            raise RecordError(
                "malformed", where, f"{path}:line {e.lineno}: malformed JSON ({e.msg})"
            ) from None
        boxes = require(meta, "boxes", path, list)
        if len(boxes) < n_objects or not all(
            isinstance(b, list) and len(b) >= 4 for b in boxes[:n_objects]
        ):
            raise RecordError(
                "bad_value",
                f"{path} (for {where})",
                f"'boxes' must hold [x1, y1, x2, y2(, score)] for each of the {n_objects} objects",
            )
        t = torch.tensor([b[:4] for b in boxes[:n_objects]], dtype=torch.float32).reshape(-1, 4)
        return t, {"width": meta.get("width"), "height": meta.get("height")}

    def __getitem__(self, i: int) -> TaskSample:
        rec = self._index.read(i)
        info: _Info = self._index.infos[i]
        where = self._index.where(i)
        objects = rec["objects"]
        tags = object_tags(objects, self.person_names, self.object_format)
        question, q_refs = render_tokens(rec["question"], tags, where)
        answers = [render_tokens(c, tags, where) for c in rec["answer_choices"]]
        if self.task == "q2a":
            text, choices, label = question, answers, info.answer_label
        else:
            text = f"{question} {answers[info.answer_label][0]}"
            choices = [render_tokens(c, tags, where) for c in rec["rationale_choices"]]
            label = info.rationale_label
        image = load_image(os.path.join(self.image_dir, info.img_fn), where)
        boxes, size = None, {"width": None, "height": None}
        if self.load_boxes:
            boxes, size = self._boxes(rec, len(objects), where)
        return TaskSample(
            key=f"vcr:{info.annot_id}:{self.task}",
            image=image,
            text=text,
            label=label,
            choices=[c for c, _ in choices],
            candidates=[
                self.candidate_template.format(question=text, choice=c) for c, _ in choices
            ],
            boxes=boxes,
            meta={
                "annot_id": info.annot_id,
                "movie": info.movie,
                "img_fn": info.img_fn,
                "objects": list(objects),
                "tags": tags,
                "question_refs": q_refs,
                "choice_refs": [r for _, r in choices],
                "answer_label": info.answer_label,
                "rationale_label": info.rationale_label,
                **size,
            },
        )

    def keys(self) -> list[str]:
        return [f"vcr:{info.annot_id}:{self.task}" for info in self._index.infos]

    def label_ids(self) -> list[int]:
        key = "answer_label" if self.task == "q2a" else "rationale_label"
        return [getattr(info, key) for info in self._index.infos]

    def domains(
        self,
        by: VCRDomainBy = "movie_hash",
        n_groups: int = 4,
        movie_groups: Mapping[str, Sequence[str]] | None = None,
    ) -> list[str]:
        """Domain label per record (see :func:`vcr_domain`)."""
        return [
            vcr_domain(info.movie, info.img_fn, by, n_groups, movie_groups)
            for info in self._index.infos
        ]

    def collator(self, **kwargs: Any) -> TaskCollator:
        return TaskCollator(**kwargs)
