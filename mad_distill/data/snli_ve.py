"""SNLI-VE reader: the official ``snli_ve_{train,dev,test}.jsonl`` and the Flickr30k image folder.

Each line of the official files (necla-ml/SNLI-VE) is an SNLI record plus ``Flickr30K_ID``::

    {"Flickr30K_ID": "3416050480", "captionID": "3416050480.jpg#4", "pairID": "3416050480.jpg#4r1n",
     "sentence1": "<the Flickr30k caption (the original SNLI premise)>",
     "sentence2": "<the hypothesis>", "gold_label": "neutral", "annotator_labels": [...], ...}

Images: ``flickr30k-images/<Flickr30K_ID>.jpg``. The premise of SNLI-VE is the image; the caption
``sentence1`` is not shown to the student, it only defines the scene domains
(:func:`snli_ve_scene_group`).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from mad_distill.data._common import (
    ErrorPolicy,
    ImageChecker,
    JsonlIndex,
    ReadReport,
    RecordError,
    TaskCollator,
    TaskSample,
    check_dir,
    load_image,
    require,
)
from mad_distill.metrics.accuracy import SNLI_VE_CLASSES

#: label names in class-index order
SNLI_VE_LABELS: tuple[str, ...] = SNLI_VE_CLASSES

#: teacher zero-shot prompts per label; ``{hypothesis}`` is the hypothesis without its final
#: period and with a lower-case first letter. Our design (the papers do not give theirs).
SNLI_VE_LABEL_PROMPTS: dict[str, str] = {
    "entailment": "a photo showing that {hypothesis}.",
    "neutral": "a photo that may or may not show that {hypothesis}.",
    "contradiction": "a photo showing that it is not true that {hypothesis}.",
}

#: scene groups over the premise captions, in priority order: a caption belongs to the first
#: group one of whose keywords it contains (as a word), else to "other".
SNLI_VE_SCENE_GROUPS: dict[str, tuple[str, ...]] = {
    "water": ("water", "beach", "ocean", "sea", "lake", "river", "pool", "swimming", "swims",
              "swim", "surf", "surfing", "surfer", "surfboard", "boat", "boats", "waves", "wave",
              "shore", "splash", "splashing", "canoe", "kayak", "fishing"),
    "snow": ("snow", "snowy", "ski", "skiing", "skier", "skiers", "snowboard", "snowboarder",
             "snowboarding", "ice", "sled", "sledding", "winter"),
    "sports": ("soccer", "football", "basketball", "baseball", "tennis", "hockey", "volleyball",
               "rugby", "golf", "ball", "player", "players", "team", "game", "match", "race",
               "racing", "bike", "bicycle", "biker", "bmx", "cyclist", "skateboard",
               "skateboarder", "stadium", "uniform", "uniforms", "jersey", "athlete",
               "marathon", "court"),
    "urban": ("street", "streets", "city", "road", "sidewalk", "building", "buildings", "car",
              "cars", "bus", "traffic", "crosswalk", "store", "shop", "market", "downtown",
              "subway", "train", "station", "storefront", "alley", "parking", "intersection"),
    "indoor": ("kitchen", "room", "restaurant", "table", "bar", "couch", "bed", "office",
               "classroom", "indoors", "inside", "stage", "church", "house", "home", "bathroom",
               "desk", "computer", "living"),
    "nature": ("grass", "grassy", "field", "park", "mountain", "mountains", "forest", "woods",
               "tree", "trees", "hill", "hills", "desert", "dirt", "trail", "rocks", "rock",
               "garden", "farm", "countryside", "outdoors", "cliff"),
}  # fmt: skip

#: the documented default domain-shift split: built / indoor scenes -> natural outdoor scenes
SNLI_VE_DOMAIN_SPLIT: dict[str, Any] = {
    "by": "scene",
    "train": ["urban", "indoor", "sports", "other"],
    "test": ["water", "snow", "nature"],
}

_WORD = re.compile(r"[a-z]+")


def snli_ve_scene_group(
    caption: str, groups: Mapping[str, Sequence[str]] = SNLI_VE_SCENE_GROUPS
) -> str:
    """Scene group of one caption (first group in ``groups`` order with a keyword, else other)."""
    words = set(_WORD.findall(caption.lower()))
    for name, keywords in groups.items():
        if words.intersection(keywords):
            return name
    return "other"


def _hypothesis_for_prompt(h: str) -> str:
    h = h.strip().rstrip(".").strip()
    return h[:1].lower() + h[1:] if h else h


@dataclass(frozen=True)
class _Info:
    image_id: str
    label: int
    caption_id: str | None
    premise: str | None


class SNLIVEDataset(Dataset[TaskSample]):
    """SNLI-VE as :class:`TaskSample` s (jsonl offsets in memory; line parsed and image opened
    per item).

    Args:
        jsonl: ``snli_ve_{train,dev,test}.jsonl``.
        image_dir: the ``flickr30k-images`` folder.
        image_pattern: file name of an image from ``{image_id}``.
        label_prompts: teacher prompt template per label (``{hypothesis}``).
        on_error: ``"raise"`` or ``"skip"`` (skipped records are counted in :attr:`report`).
        check_images: verify at indexing that every image exists.

    Each sample: ``text`` = hypothesis; ``label`` = index in :data:`SNLI_VE_LABELS`;
    ``candidates`` = the 3 label prompts for this hypothesis; ``meta`` has ``pair_id, image_id,
    gold_label, premise``.
    """

    labels = SNLI_VE_LABELS

    def __init__(
        self,
        jsonl: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        image_pattern: str = "{image_id}.jpg",
        label_prompts: Mapping[str, str] = SNLI_VE_LABEL_PROMPTS,
        on_error: str = "raise",
        check_images: bool = True,
    ) -> None:
        self.image_dir = check_dir(image_dir, "SNLI-VE image_dir (flickr30k-images)")
        missing = [lab for lab in SNLI_VE_LABELS if lab not in label_prompts]
        if missing:
            raise ValueError(f"label_prompts lacks a prompt for {missing}")
        for lab in SNLI_VE_LABELS:
            if "{hypothesis}" not in label_prompts[lab]:
                raise ValueError(f"label_prompts[{lab!r}] must contain '{{hypothesis}}'")
        self.image_pattern = image_pattern
        self.label_prompts = {lab: label_prompts[lab] for lab in SNLI_VE_LABELS}
        self._label_index = {lab: i for i, lab in enumerate(SNLI_VE_LABELS)}
        self._checker = ImageChecker(check_images)
        self.report = ReadReport(source=os.path.basename(os.fspath(jsonl)))
        self._index = JsonlIndex(jsonl, self._validate, ErrorPolicy(on_error, self.report))
        self.report.log()

    def _validate(self, rec: dict, where: str) -> _Info:
        image_id = require(rec, "Flickr30K_ID", where, (str, int))
        image_id = str(image_id)
        require(rec, "sentence2", where, str)
        require(rec, "pairID", where, str)
        gold = require(rec, "gold_label", where, str)
        if gold not in self._label_index:
            raise RecordError(
                "unknown_label",
                where,
                f"unknown gold_label {gold!r}; allowed: {list(SNLI_VE_LABELS)}",
            )
        premise = rec.get("sentence1")
        caption_id = rec.get("captionID")
        self._checker.check(self.image_path(image_id), where)
        return _Info(
            image_id,
            self._label_index[gold],
            caption_id if isinstance(caption_id, str) else None,
            premise if isinstance(premise, str) else None,
        )

    @property
    def report_dict(self) -> dict[str, Any]:
        return self.report.as_dict()

    def image_path(self, image_id: str) -> str:
        return os.path.join(self.image_dir, self.image_pattern.format(image_id=image_id))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> TaskSample:
        rec = self._index.read(i)
        info: _Info = self._index.infos[i]
        where = self._index.where(i)
        image = load_image(self.image_path(info.image_id), where)
        hyp = rec["sentence2"]
        h = _hypothesis_for_prompt(hyp)
        return TaskSample(
            key=f"snli_ve:{rec['pairID']}",
            image=image,
            text=hyp,
            label=info.label,
            candidates=[self.label_prompts[lab].format(hypothesis=h) for lab in SNLI_VE_LABELS],
            meta={
                "pair_id": rec["pairID"],
                "image_id": info.image_id,
                "gold_label": SNLI_VE_LABELS[info.label],
                "premise": info.premise,
            },
        )

    def keys(self) -> list[str]:
        return [f"snli_ve:{self._index.read(i)['pairID']}" for i in range(len(self))]

    def label_ids(self) -> list[int]:
        return [info.label for info in self._index.infos]

    def domains(
        self, by: str = "scene", groups: Mapping[str, Sequence[str]] = SNLI_VE_SCENE_GROUPS
    ) -> list[str]:
        """Domain label per record, constant per image.

        ``by="scene"``: each distinct caption of an image gets :func:`snli_ve_scene_group`; the
        image's domain is the majority group (ties: the earlier group in ``groups`` order), so
        every hypothesis about one image lands in the same domain.
        """
        if by != "scene":
            raise ValueError(f"by must be 'scene', got {by!r}")
        order = {name: k for k, name in enumerate(groups)}
        order["other"] = len(order)
        votes: dict[str, Counter] = defaultdict(Counter)
        seen: set[tuple[str, str]] = set()
        for i, info in enumerate(self._index.infos):
            if info.premise is None:
                raise ValueError(f"{self._index.where(i)}: no 'sentence1' caption for the domain")
            cap_key = (info.image_id, info.caption_id or info.premise)
            if cap_key in seen:
                continue  # each caption votes once, however many hypotheses it has
            seen.add(cap_key)
            votes[info.image_id][snli_ve_scene_group(info.premise, groups)] += 1
        per_image = {
            img: min(c, key=lambda g: (-c[g], order.get(g, len(order)))) for img, c in votes.items()
        }
        return [per_image[info.image_id] for info in self._index.infos]

    def collator(self, **kwargs: Any) -> TaskCollator:
        return TaskCollator(**kwargs)
