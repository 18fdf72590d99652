"""VQA v2 reader: the official questions/annotations JSON and the COCO image folders, unchanged.

Files (https://visualqa.org/download.html)::

    v2_OpenEnded_mscoco_train2014_questions.json   {"data_subtype": "train2014", "questions": [
                                                      {"image_id", "question", "question_id"}]}
    v2_mscoco_train2014_annotations.json           {"annotations": [{"question_id", "image_id",
                                                      "question_type", "answer_type",
                                                      "multiple_choice_answer", "answers": [
                                                      {"answer", "answer_confidence",
                                                       "answer_id"} x 10]}]}
    train2014/COCO_train2014_000000000009.jpg      image by image_id (12 digits)

The test splits have questions only (``annotations=None``). Soft targets are over an
:class:`AnswerVocab` built from the training annotations (top-N answers by frequency after the
official normalisation, :func:`mad_distill.metrics.vqa.normalize_answer`); an answer's target is its
expected official accuracy (:func:`mad_distill.metrics.vqa.soft_score`: 0.3 / 0.6 / 0.9 / 1 for
1 / 2 / 3 / 4+ of 10 humans).

The JSON documents are single-line files, so bad records are located by their array index
(``file:questions[17]``) rather than a line number; JSON syntax errors give the line and column.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mad_distill.data._common import (
    ErrorPolicy,
    ImageChecker,
    ReadReport,
    RecordError,
    TaskCollator,
    TaskSample,
    check_dir,
    check_file,
    load_image,
    load_json,
    require,
)
from mad_distill.metrics.vqa import VQA_ANSWER_TYPES, normalize_answer, soft_score

_VOCAB_FORMAT = "mad_distill.vqa_answer_vocab"
_VOCAB_VERSION = 1

VocabSource = Literal["multiple_choice_answer", "answers"]


# ---------------------------------------------------------------------------------------------
# answer vocabulary


class AnswerVocab:
    """An ordered answer vocabulary (entries are normalised answers).

    Args:
        answers: the answers, index = class id; must be unique and already normalised.
        counts: their training frequencies (kept for the record), optional.
        info: how the vocabulary was built (saved with it).
    """

    def __init__(
        self,
        answers: Sequence[str],
        counts: Sequence[int] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        answers = list(answers)
        if not answers:
            raise ValueError("AnswerVocab needs at least one answer")
        dup = [a for a, c in Counter(answers).items() if c > 1]
        if dup:
            raise ValueError(f"AnswerVocab answers must be unique; duplicated: {dup[:5]}")
        if counts is not None and len(counts) != len(answers):
            raise ValueError(f"AnswerVocab got {len(answers)} answers but {len(counts)} counts")
        self.answers = answers
        self.counts = None if counts is None else [int(c) for c in counts]
        self.info = dict(info or {})
        self._index = {a: i for i, a in enumerate(answers)}

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return normalize_answer(answer) in self._index

    def index(self, answer: str) -> int:
        """Class id of ``answer`` (normalised first), -1 if it is not in the vocabulary."""
        return self._index.get(normalize_answer(answer), -1)

    def soft_target(self, answers: Sequence[str]) -> Tensor:
        """``[A]`` float target from the human answers (each answer's expected accuracy)."""
        target = torch.zeros(len(self.answers))
        counts = Counter(_normalize_cached(a) for a in answers)
        for ans, c in counts.items():
            i = self._index.get(ans)
            if i is not None:
                target[i] = soft_score(c, len(answers))
        return target

    @classmethod
    def build(
        cls,
        annotations: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        top_n: int = 3129,
        min_count: int = 1,
        source: VocabSource = "multiple_choice_answer",
    ) -> AnswerVocab:
        """Top-``top_n`` normalised answers of the annotation file(s) by frequency.

        Args:
            annotations: the training annotations JSON (or several).
            top_n: vocabulary size cap (3129 is the common VQA v2 choice).
            min_count: drop answers seen fewer times.
            source: count ``multiple_choice_answer`` (one per question, the common choice) or all
                10 human ``answers``.

        Ties in frequency are broken alphabetically, so the vocabulary is deterministic.
        """
        if source not in ("multiple_choice_answer", "answers"):
            raise ValueError(
                f"source must be 'multiple_choice_answer' or 'answers', got {source!r}"
            )
        if top_n < 1 or min_count < 1:
            raise ValueError(f"top_n and min_count must be >= 1, got {top_n}, {min_count}")
        paths = [annotations] if isinstance(annotations, (str, os.PathLike)) else annotations
        counts: Counter[str] = Counter()
        for path in paths:
            doc = load_json(path, "VQA annotations file")
            anns = _top_list(doc, "annotations", path)
            for i, ann in enumerate(anns):
                where = f"{path}:annotations[{i}]"
                if source == "multiple_choice_answer":
                    counts[_normalize_cached(require(ann, source, where, str))] += 1
                else:
                    for a in _answers(ann, where):
                        counts[_normalize_cached(a)] += 1
        counts.pop("", None)  # an answer that normalises to nothing is no class
        ranked = sorted(
            (a for a in counts if counts[a] >= min_count), key=lambda a: (-counts[a], a)
        )
        ranked = ranked[:top_n]
        info = {
            "source": source,
            "top_n": top_n,
            "min_count": min_count,
            "normalisation": "vqaEval (punctuation, digits, articles, contractions)",
            "built_from": [Path(p).name for p in paths],
        }
        return cls(ranked, [counts[a] for a in ranked], info)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as JSON (keep it with the run: class ids depend on it)."""
        doc = {
            "format": _VOCAB_FORMAT,
            "version": _VOCAB_VERSION,
            "info": self.info,
            "answers": self.answers,
            "counts": self.counts,
        }
        Path(path).write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AnswerVocab:
        doc = load_json(path, "answer vocabulary file")
        if not isinstance(doc, dict) or doc.get("format") != _VOCAB_FORMAT:
            raise ValueError(f"{path}: not an answer vocabulary (format {_VOCAB_FORMAT!r})")
        if doc.get("version") != _VOCAB_VERSION:
            raise ValueError(
                f"{path}: answer vocabulary version {doc.get('version')!r}, "
                f"expected {_VOCAB_VERSION}"
            )
        return cls(doc["answers"], doc.get("counts"), doc.get("info"))


_NORM_CACHE: dict[str, str] = {}


def _normalize_cached(answer: str) -> str:
    # ~20 distinct answers cover most of VQA; normalising each once saves most of the work
    out = _NORM_CACHE.get(answer)
    if out is None:
        out = _NORM_CACHE[answer] = sys.intern(normalize_answer(answer))
    return out


# ---------------------------------------------------------------------------------------------
# domains


#: question-type groups over the official 65 mscoco question types (first matching rule wins)
def vqa_question_group(question_type: str) -> str:
    """Group an official ``question_type`` (e.g. ``"what color is the"``) into a domain.

    ``count`` ("how many ..."), ``color`` (mentions color), ``verify`` (yes/no-style: starts with
    is/are/does/do/has/can/could/was/were/will/should/would/did), ``what`` (other what/which
    questions), ``other`` (why/where/who/how/when/none of these).
    """
    qt = question_type.lower().strip()
    first = qt.split(" ", 1)[0] if qt else ""
    if qt.startswith("how many"):
        return "count"
    if "color" in qt:
        return "color"
    if first in {"is", "are", "does", "do", "has", "have", "can", "could", "was", "were", "will",
                 "should", "would", "did"}:  # fmt: skip
        return "verify"
    if first in {"what", "which"}:
        return "what"
    return "other"


VQADomainBy = Literal["question_group", "answer_type", "question_type"]

#: the documented default domain-shift split (see docs/readme_parts/real_data.md)
VQA_DOMAIN_SPLIT: dict[str, Any] = {
    "by": "question_group",
    "train": ["verify", "count", "color", "what"],
    "test": ["other"],
}


def vqa_domain(question_type: str, answer_type: str, by: VQADomainBy = "question_group") -> str:
    """Domain label of one VQA record."""
    if by == "question_group":
        return vqa_question_group(question_type)
    if by == "answer_type":
        return answer_type
    if by == "question_type":
        return question_type
    raise ValueError(f"by must be 'question_group', 'answer_type' or 'question_type', got {by!r}")


# ---------------------------------------------------------------------------------------------
# dataset


@dataclass(frozen=True)
class _Record:
    question_id: int
    image_id: int
    question: str
    where: str
    answers: tuple[str, ...] | None = None
    answer_type: str | None = None
    question_type: str | None = None
    multiple_choice_answer: str | None = None


def _top_list(doc: Any, key: str, path: Any) -> list:
    if not isinstance(doc, dict) or key not in doc:
        raise ValueError(f"{path}: not a VQA file, no top-level {key!r} list")
    value = doc[key]
    if not isinstance(value, list):
        raise ValueError(f"{path}: top-level {key!r} must be a list")
    return value


def _answers(ann: dict, where: str) -> list[str]:
    raw = require(ann, "answers", where, list)
    if not raw:
        raise RecordError("bad_value", where, "field 'answers' is empty")
    out = []
    for j, a in enumerate(raw):
        out.append(require(a, "answer", f"{where}.answers[{j}]", str))
    return out


class VQADataset(Dataset[TaskSample]):
    """VQA v2 as :class:`TaskSample` s (map-style; images opened per item).

    Args:
        questions: the official questions JSON.
        annotations: the official annotations JSON, or None (test splits).
        image_dir: the COCO folder of this split (e.g. ``.../train2014``).
        vocab: the answer vocabulary for soft targets / class ids / teacher prompts, optional.
        image_pattern: file name of an image; ``{subtype}`` is the questions file's
            ``data_subtype`` (``train2014``), ``{image_id}`` the id.
        prompt_template: teacher zero-shot prompt per vocabulary answer (``{answer}``).
        answer_types: allowed ``answer_type`` values (others are an "unknown label" error).
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` it and count it in
            :attr:`report`.
        check_images: verify at indexing that every record's image exists (one ``stat`` per image).

    Each sample: ``text`` = question; ``target`` = ``[A]`` soft scores (with annotations and a
    vocabulary); ``label`` = the best-scoring class (-1 if none of the answers is in the
    vocabulary, or no annotations); candidates are shared: :attr:`candidates`. ``meta`` has
    ``question_id, image_id, answers, answer_type, question_type, multiple_choice_answer``.
    """

    def __init__(
        self,
        questions: str | os.PathLike[str],
        annotations: str | os.PathLike[str] | None,
        image_dir: str | os.PathLike[str],
        vocab: AnswerVocab | None = None,
        image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg",
        prompt_template: str = "a photo of {answer}.",
        answer_types: Sequence[str] = VQA_ANSWER_TYPES,
        on_error: str = "raise",
        check_images: bool = True,
    ) -> None:
        self.questions_path = check_file(questions, "VQA questions file")
        self.annotations_path = (
            None if annotations is None else check_file(annotations, "VQA annotations file")
        )
        self.image_dir = check_dir(image_dir, "VQA image_dir")
        if "{answer}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{answer}}', got {prompt_template!r}")
        self.vocab = vocab
        self.image_pattern = image_pattern
        self.prompt_template = prompt_template
        self.answer_types = tuple(answer_types)
        self.report = ReadReport(source=self.questions_path.name)
        policy = ErrorPolicy(on_error, self.report)

        qdoc = load_json(self.questions_path, "VQA questions file")
        qlist = _top_list(qdoc, "questions", self.questions_path)
        self.subtype = qdoc.get("data_subtype")
        if "{subtype}" in image_pattern and not isinstance(self.subtype, str):
            raise ValueError(
                f"{self.questions_path}: no 'data_subtype' string, needed by image_pattern "
                f"{image_pattern!r}; pass an image_pattern without {{subtype}}"
            )
        ann_by_qid = self._index_annotations() if self.annotations_path else None
        checker = ImageChecker(check_images)
        self._records: list[_Record] = []
        for i, q in enumerate(qlist):
            self.report.n_read += 1
            where = f"{self.questions_path}:questions[{i}]"
            try:
                rec = self._record(q, where, ann_by_qid)
                checker.check(self.image_path(rec.image_id), where)
            except RecordError as err:
                policy.handle(err)
                continue
            self._records.append(rec)
            self.report.n_kept += 1
        self.report.log()

    # -- indexing ------------------------------------------------------------------------------

    def _index_annotations(self) -> dict[int, tuple[dict, str]]:
        path = self.annotations_path
        adoc = load_json(path, "VQA annotations file")  # type: ignore[arg-type]
        out: dict[int, tuple[dict, str]] = {}
        for j, ann in enumerate(_top_list(adoc, "annotations", path)):
            qid = ann.get("question_id") if isinstance(ann, dict) else None
            # an annotation without a usable question_id cannot be attached; its question is
            # then reported as having no annotation
            if isinstance(qid, int) and not isinstance(qid, bool):
                out[qid] = (ann, f"{path}:annotations[{j}]")
        return out

    def _record(self, q: Any, where: str, anns: dict | None) -> _Record:
        qid = require(q, "question_id", where, int)
        image_id = require(q, "image_id", where, int)
        question = require(q, "question", where, str)
        if anns is None:
            return _Record(qid, image_id, question, where)
        if qid not in anns:
            raise RecordError(
                "missing_annotation",
                where,
                f"question_id {qid} has no annotation in {self.annotations_path}",
            )
        ann, awhere = anns[qid]
        full = f"{where} / {awhere}"
        if require(ann, "image_id", awhere, int) != image_id:
            raise RecordError(
                "bad_value",
                full,
                f"image_id differs between question ({image_id}) and "
                f"annotation ({ann['image_id']})",
            )
        answer_type = require(ann, "answer_type", awhere, str)
        if answer_type not in self.answer_types:
            raise RecordError(
                "unknown_label",
                awhere,
                f"unknown answer_type {answer_type!r}; allowed: {list(self.answer_types)}",
            )
        answers = tuple(sys.intern(a) for a in _answers(ann, awhere))
        return _Record(
            qid,
            image_id,
            question,
            where,
            answers=answers,
            answer_type=sys.intern(answer_type),
            question_type=sys.intern(require(ann, "question_type", awhere, str)),
            multiple_choice_answer=sys.intern(require(ann, "multiple_choice_answer", awhere, str)),
        )

    # -- access --------------------------------------------------------------------------------

    def image_path(self, image_id: int) -> str:
        name = self.image_pattern.format(subtype=self.subtype, image_id=image_id)
        return os.path.join(self.image_dir, name)

    @property
    def candidates(self) -> list[str] | None:
        """The teacher's shared zero-shot prompts, one per vocabulary answer (None w/o vocab)."""
        if self.vocab is None:
            return None
        return [self.prompt_template.format(answer=a) for a in self.vocab.answers]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> TaskSample:
        r = self._records[i]
        image = load_image(self.image_path(r.image_id), r.where)
        target, label = None, -1
        if r.answers is not None and self.vocab is not None:
            target = self.vocab.soft_target(r.answers)
            if target.max() > 0:
                label = int(target.argmax())
        meta = {
            "question_id": r.question_id,
            "image_id": r.image_id,
            "answers": None if r.answers is None else list(r.answers),
            "answer_type": r.answer_type,
            "question_type": r.question_type,
            "multiple_choice_answer": r.multiple_choice_answer,
        }
        return TaskSample(
            key=f"vqa:{r.question_id}",
            image=image,
            text=r.question,
            label=label,
            target=target,
            meta=meta,
        )

    def domains(self, by: VQADomainBy = "question_group") -> list[str]:
        """Domain label per record (needs annotations: question/answer types live there)."""
        if self.annotations_path is None:
            raise ValueError("VQA domains need the annotations file (question/answer types)")
        return [vqa_domain(r.question_type, r.answer_type, by) for r in self._records]  # type: ignore[arg-type]

    def keys(self) -> list[str]:
        return [f"vqa:{r.question_id}" for r in self._records]

    def collator(self, **kwargs: Any) -> TaskCollator:
        """A :class:`TaskCollator` whose shared candidates are this dataset's answer prompts."""
        kwargs.setdefault("shared_candidates", self.candidates)
        return TaskCollator(**kwargs)
