"""VQA v2 accuracy, exactly as the official evaluation script.

Follows ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GT-Vision-Lab/VQA (current master, as
confirmed by its maintainer in GT-Vision-Lab/VQA#14):

1. the prediction and every human answer have ``\\n``/``\\t`` replaced by spaces and are stripped;
2. **only when the 10 human answers are not all identical**, the human answers and the prediction
   are normalised: :func:`process_punctuation` then :func:`process_digit_article` (number words ->
   digits, articles dropped, contractions restored). When all humans agree nothing is normalised
   (the maintainers' reason: OCR-like answers must match verbatim);
3. for each of the 10 leave-one-out subsets of 9 human answers,
   ``acc = min(#humans in the subset that gave the prediction / 3, 1)``; the question's accuracy is
   the mean over the 10 subsets; the dataset's is the mean over questions (and per answer type).

``protocol="normalized"`` is a documented deviation some toolkits use (always normalise both
sides); ``protocol="official"`` (the default) is the script.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

Protocol = Literal["official", "normalized"]
_PROTOCOLS = ("official", "normalized")

#: the official answer types of VQA v2 (``answer_type`` in the annotation files)
VQA_ANSWER_TYPES: tuple[str, ...] = ("yes/no", "number", "other")

# --- the official normalisation tables (vqaEval.py), verbatim in content ----------------------
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# The script's lookbehind is mistyped as ``(?!<=\d)`` (a lookahead that always holds here), so a
# period is stripped whenever it is not followed by a digit. Kept as is: it is the metric.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = (
    ";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# The script calls ``periodStrip.sub("", text, re.UNICODE)``: the flag lands in ``count``, so at
# most re.UNICODE (= 32) periods are removed. Reproduced for exactness.
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """``processPunctuation`` of the official script.

    Each punctuation mark is deleted when it touches a space in the *input* (or the input has a
    digit-comma-digit), otherwise replaced by a space; then periods not followed by a digit go.
    """
    out = text
    comma_digits = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or comma_digits:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """``processDigitArticle``: lower-case, number words -> digits, drop articles, contractions."""
    words = []
    for word in text.lower().split():
        word = _MANUAL_MAP.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: str) -> str:
    """The full official normalisation of one answer (clean, punctuation, digits/articles).

    Used to build answer vocabularies and soft targets; the metric itself applies it only where
    the protocol says so (see the module docstring).
    """
    return process_digit_article(process_punctuation(_clean(answer)))


def vqa_score(prediction: str, answers: Sequence[str], protocol: Protocol = "official") -> float:
    """Official accuracy of one prediction against the human answers (usually 10).

    ``mean over i of min(#{j != i : answers[j] == prediction} / 3, 1)``, after the protocol's
    normalisation.
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}")
    if len(answers) == 0:
        raise ValueError("vqa_score needs at least one human answer")
    gts = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if protocol == "normalized" or len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    if len(gts) == 1:  # a single answer has no leave-one-out subsets: plain exact match
        return float(gts[0] == pred)
    matches = sum(g == pred for g in gts)
    total = 0.0
    for g in gts:
        others = matches - (g == pred)
        total += min(1.0, others / 3.0)
    return total / len(gts)


def soft_score(count: int, n_answers: int = 10) -> float:
    """Expected official accuracy of an answer given by ``count`` of ``n_answers`` humans.

    With 10 humans: 0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >=4 -> 1 (the leave-one-out mean; the
    same values as the usual VQA soft targets).
    """
    if n_answers <= 1:
        return float(count > 0)
    hit = count * min(1.0, (count - 1) / 3.0)
    miss = (n_answers - count) * min(1.0, count / 3.0)
    return (hit + miss) / n_answers


# --- torchmetrics ----------------------------------------------------------------------------


def _type_key(answer_type: str) -> str:
    return "acc_" + re.sub(r"\W+", "_", answer_type).strip("_")


def _vqa_accuracy_update(
    preds: Sequence[str],
    answers: Sequence[Sequence[str]],
    type_ids: Sequence[int],
    num_types: int,
    protocol: Protocol,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sums for one batch: ``(acc_sum, count, per_type_sum [T], per_type_count [T])``."""
    type_sum = torch.zeros(num_types, dtype=torch.float64)
    type_count = torch.zeros(num_types, dtype=torch.float64)
    total = 0.0
    for pred, gts, t in zip(preds, answers, type_ids):
        s = vqa_score(pred, gts, protocol)
        total += s
        if t >= 0:
            type_sum[t] += s
            type_count[t] += 1
    return (
        torch.tensor(total, dtype=torch.float64),
        torch.tensor(float(len(preds)), dtype=torch.float64),
        type_sum,
        type_count,
    )


def _vqa_accuracy_compute(
    acc_sum: Tensor, count: Tensor, type_sum: Tensor, type_count: Tensor, types: Sequence[str]
) -> dict[str, Tensor]:
    """``{"acc": ..., "acc_<type>": ...}`` in [0, 1]; NaN where nothing was counted."""
    nan = torch.tensor(math.nan, dtype=torch.float64, device=acc_sum.device)
    out = {"acc": acc_sum / count if count > 0 else nan}
    for i, t in enumerate(types):
        out[_type_key(t)] = type_sum[i] / type_count[i] if type_count[i] > 0 else nan
    return out


class VQAAccuracy(Metric):
    """Official VQA v2 accuracy with a per-answer-type breakdown (DDP: every state is a sum).

    Args:
        answer_types: the answer types to break down by (default the official three).
        answer_vocab: answer strings, needed when ``update`` gets class indices or scores.
        protocol: ``"official"`` (the script) or ``"normalized"`` (always normalise both sides).

    ``compute()`` returns ``{"acc", "acc_yes_no", "acc_number", "acc_other"}`` in [0, 1].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        answer_types: Sequence[str] = VQA_ANSWER_TYPES,
        answer_vocab: Sequence[str] | None = None,
        protocol: Protocol = "official",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}")
        if len(answer_types) == 0 or len(set(answer_types)) != len(answer_types):
            raise ValueError(f"answer_types must be non-empty and unique, got {answer_types!r}")
        self.answer_types = tuple(answer_types)
        self._type_index = {t: i for i, t in enumerate(self.answer_types)}
        self.answer_vocab = None if answer_vocab is None else list(answer_vocab)
        self.protocol: Protocol = protocol
        z = torch.tensor(0.0, dtype=torch.float64)
        zt = torch.zeros(len(self.answer_types), dtype=torch.float64)
        self.add_state("acc_sum", default=z.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=z.clone(), dist_reduce_fx="sum")
        self.add_state("type_sum", default=zt.clone(), dist_reduce_fx="sum")
        self.add_state("type_count", default=zt.clone(), dist_reduce_fx="sum")

    def _as_strings(self, preds: Sequence[str] | Tensor) -> list[str]:
        if not isinstance(preds, Tensor):
            if not all(isinstance(p, str) for p in preds):
                raise TypeError("VQAAccuracy preds must be strings or a tensor of indices/scores")
            return list(preds)
        if self.answer_vocab is None:
            raise ValueError("VQAAccuracy got tensor preds but no answer_vocab to map them")
        idx = preds.argmax(-1) if preds.dim() == 2 else preds
        if idx.dim() != 1:
            raise ValueError(f"VQAAccuracy preds must be [B] or [B, A], got {tuple(preds.shape)}")
        if preds.dim() == 2 and preds.shape[1] != len(self.answer_vocab):
            raise ValueError(
                f"VQAAccuracy preds have {preds.shape[1]} scores but the answer_vocab has "
                f"{len(self.answer_vocab)} answers"
            )
        out = []
        for i in idx.tolist():
            if not 0 <= i < len(self.answer_vocab):
                raise ValueError(f"VQAAccuracy pred index {i} outside the answer_vocab")
            out.append(self.answer_vocab[i])
        return out

    def update(
        self,
        preds: Sequence[str] | Tensor,
        answers: Sequence[Sequence[str]],
        answer_types: Sequence[str] | None = None,
    ) -> None:
        """Add a batch.

        Args:
            preds: ``B`` predicted answer strings, or ``[B]`` indices / ``[B, A]`` scores over
                ``answer_vocab``.
            answers: ``B`` lists of the human answers (10 in VQA v2).
            answer_types: ``B`` answer types (for the breakdown), optional.
        """
        strings = self._as_strings(preds)
        if len(answers) != len(strings):
            raise ValueError(f"VQAAccuracy got {len(strings)} preds but {len(answers)} answers")
        if answer_types is None:
            type_ids = [-1] * len(strings)
        else:
            if len(answer_types) != len(strings):
                raise ValueError(
                    f"VQAAccuracy got {len(strings)} preds but {len(answer_types)} answer_types"
                )
            type_ids = []
            for t in answer_types:
                if t not in self._type_index:
                    raise ValueError(
                        f"unknown answer_type {t!r}; allowed: {list(self.answer_types)}"
                    )
                type_ids.append(self._type_index[t])
        s, n, ts, tn = _vqa_accuracy_update(
            strings, answers, type_ids, len(self.answer_types), self.protocol
        )
        dev = self.acc_sum.device
        self.acc_sum += s.to(dev)
        self.count += n.to(dev)
        self.type_sum += ts.to(dev)
        self.type_count += tn.to(dev)

    def compute(self) -> dict[str, Tensor]:
        return _vqa_accuracy_compute(
            self.acc_sum, self.count, self.type_sum, self.type_count, self.answer_types
        )
