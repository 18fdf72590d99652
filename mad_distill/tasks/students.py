"""Students for the task finetunes: one interface over the built-in student and HF models.

A :class:`TaskStudent` is built by the task module as ``student(task, num_classes)`` (in YAML a
``class_path`` + ``init_args`` without those two; jsonargparse passes the rest), brings its own
preprocessing (:attr:`TaskStudent.image_transform`, :attr:`TaskStudent.text_processor`, used by
the :class:`~mad_distill.data._common.TaskCollator` in the DataLoader workers) and returns
:class:`~mad_distill.types.StudentTokens` with the task logits in ``logits``.

Text convention (shared with :class:`~mad_distill.students.WordTokenizer`): for multiple-choice
tasks the student reads ``(text, choice)`` pairs, and the word ids of the choice continue after
those of the text, i.e. they index ``split_words(text + " " + choice)`` -- the text the teachers
read for the exposed run (see :func:`teacher_texts`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from mad_distill.align import split_words, word_ids_from_offsets
from mad_distill.students.builtin import TASKS, BuiltinVLStudent
from mad_distill.students.tokenizer import WordTokenizer
from mad_distill.types import StudentTokens

__all__ = [
    "BuiltinTaskStudent",
    "HFTextProcessor",
    "ResizeNormalize",
    "StudentFactory",
    "TaskStudent",
    "WordTextProcessor",
    "load_text_processor",
    "teacher_texts",
]


class TaskStudent(nn.Module):
    """Base class of the task students.

    Args:
        task: ``"classify"`` (``[B, C]`` logits over ``num_classes``) or ``"multiple_choice"``
            (``[B, K]``, one score per choice).
        num_classes: number of classes for ``classify`` (ignored for ``multiple_choice``).

    Subclasses set :attr:`image_transform` (PIL image -> ``[3, H, W]``) and
    :attr:`text_processor` (``(texts, choices) -> dict`` of tensors, see
    :class:`HFTextProcessor`), and implement :meth:`forward`.
    """

    image_transform: Callable[[Image.Image], Tensor]
    text_processor: Callable[[list[str], list[list[str]] | None], dict[str, Tensor]]

    def __init__(self, task: str, num_classes: int) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task == "classify" and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(
                f"num_classes must be an int >= 1 for task='classify', got {num_classes!r}"
            )
        self.task = task
        self.num_classes = num_classes

    @property
    def hidden_dim(self) -> int:
        """Width ``d_s`` of ``StudentTokens.hidden`` (MAD's projection heads take it)."""
        raise NotImplementedError

    def forward(self, inputs: dict[str, Any], token_choice: Tensor | None = None) -> StudentTokens:
        """Run on a :class:`~mad_distill.data._common.TaskBatch`'s ``inputs``.

        Args:
            inputs: ``pixel_values [B, 3, H, W]`` plus the text processor's tensors.
            token_choice: ``multiple_choice`` only: ``[B]`` which choice's run the returned tokens
                come from (default 0).

        Returns:
            :class:`~mad_distill.types.StudentTokens` with ``logits`` ``[B, C]`` / ``[B, K]``.
        """
        raise NotImplementedError


#: what a task module's ``student`` argument is: ``student(task, num_classes) -> TaskStudent``
StudentFactory = Callable[[str, int], TaskStudent]


def teacher_texts(
    texts: Sequence[str], choices: Sequence[Sequence[str]] | None, token_choice: Tensor | None
) -> list[str]:
    """The texts the teachers read for the student's exposed run.

    Single-text tasks: ``texts``; multiple choice: ``text + " " + choices[token_choice]``.
    """
    if choices is None:
        return list(texts)
    if token_choice is None:
        raise ValueError("multiple-choice inputs need token_choice to know which run is distilled")
    picks = token_choice.tolist()
    return [f"{t} {c[k]}" for t, c, k in zip(texts, choices, picks)]


# ------------------------------------------------------------------------------ preprocessing
class ResizeNormalize:
    """PIL image -> ``[3, size, size]`` float tensor: resize (bicubic), scale to [0, 1], normalise.

    Picklable (DataLoader workers). Args: ``size`` side in pixels; ``mean``/``std`` per channel.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        self.size = size
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> Tensor:
        im = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        x = x.view(self.size, self.size, 3).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std


def _pairs_flat(
    texts: Sequence[str], choices: Sequence[Sequence[str]] | None
) -> tuple[list[str], list[str] | None, int | None]:
    if choices is None:
        return list(texts), None, None
    ks = {len(c) for c in choices}
    if len(ks) != 1:
        raise ValueError(f"every example needs the same number of choices, got {sorted(ks)}")
    k = ks.pop()
    flat_t = [t for t in texts for _ in range(k)]
    flat_c = [c for cs in choices for c in cs]
    return flat_t, flat_c, k


def _unflatten(out: dict[str, Tensor], b: int, k: int | None) -> dict[str, Tensor]:
    if k is None:
        return out
    return {name: t.view(b, k, *t.shape[1:]) for name, t in out.items()}


class HFTextProcessor:
    """Tokenise with a Hugging Face *fast* tokenizer and add ``word_ids`` from its offsets.

    Args:
        tokenizer: a ``PreTrainedTokenizerFast`` (offset mapping needed for word ids).
        max_length: truncate to this many tokens (specials included).

    ``__call__(texts, choices)`` returns ``input_ids``, ``attention_mask``, ``word_ids`` (and
    ``token_type_ids`` if the tokenizer makes them), ``[B, L]``, or ``[B, K, L]`` with choices;
    choice word ids continue after the text's (module doc).
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"{type(tokenizer).__name__} is not a fast tokenizer: word alignment needs "
                "offset mappings (save the model's tokenizer.json, or use use_fast=True)"
            )
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(
        self, texts: list[str], choices: list[list[str]] | None = None
    ) -> dict[str, Tensor]:
        flat_t, flat_c, k = _pairs_flat(texts, choices)
        enc = self.tokenizer(
            flat_t,
            flat_c,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = enc.pop("offset_mapping").tolist()
        word_ids = torch.full_like(enc["input_ids"], -1)
        for row in range(len(flat_t)):
            seq = enc.sequence_ids(row)
            text = flat_t[row]
            full = text if flat_c is None else f"{text} {flat_c[row]}"
            shift = len(text) + 1  # the pair's offsets are relative to the pair string
            offs = [
                (0, 0) if s is None else (a + shift, b + shift) if s == 1 else (a, b)
                for (a, b), s in zip(offsets[row], seq)
            ]
            word_ids[row] = torch.tensor(word_ids_from_offsets(offs, split_words(full)))
        out = {
            name: enc[name]
            for name in ("input_ids", "attention_mask", "token_type_ids")
            if name in enc
        }
        out["word_ids"] = word_ids
        return _unflatten(out, len(texts), k)


class WordTextProcessor:
    """The same interface over a :class:`~mad_distill.students.WordTokenizer`."""

    def __init__(self, tokenizer: WordTokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(
        self, texts: list[str], choices: list[list[str]] | None = None
    ) -> dict[str, Tensor]:
        flat_t, flat_c, k = _pairs_flat(texts, choices)
        out = self.tokenizer(flat_t, flat_c, max_length=self.max_length)
        out["attention_mask"] = out["attention_mask"].long()
        return _unflatten(out, len(texts), k)


def load_text_processor(path: str | os.PathLike[str], max_length: int) -> tuple[Any, int]:
    """``(processor, vocab_size)`` from a tokenizer path.

    ``path`` is a :class:`~mad_distill.students.WordTokenizer` JSON file (``.json``) or a
    directory with a Hugging Face fast tokenizer (e.g. the ViLT or RoBERTa model folder).
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_file() and p.suffix == ".json":
        tok = WordTokenizer.load(p)
        return WordTextProcessor(tok, max_length), len(tok)
    if p.is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(p), use_fast=True)
        return HFTextProcessor(tok, max_length), len(tok)
    raise FileNotFoundError(
        f"tokenizer not found: {p} (give a WordTokenizer .json file or a Hugging Face tokenizer "
        "directory)"
    )


# ------------------------------------------------------------------------------ built-in
class BuiltinTaskStudent(TaskStudent):
    """The built-in cross-modal student (:class:`~mad_distill.students.BuiltinVLStudent`),
    trained from scratch, with its tokenizer and image transform.

    Args:
        task / num_classes: given by the task module.
        tokenizer: a :class:`~mad_distill.students.WordTokenizer` JSON file or a Hugging Face
            fast-tokenizer directory (e.g. the ViLT / RoBERTa folder: a ready subword vocabulary).
        image_size / patch_size / dim / depth / heads / mlp_ratio / dropout / tap_layer /
            mlm_vocab_size: see :class:`~mad_distill.students.BuiltinVLStudent`.
        max_text_len: longest token sequence (text + choice, specials included).
        image_mean / image_std: normalisation of the student's images.
    """

    def __init__(
        self,
        task: str,
        num_classes: int,
        *,
        tokenizer: str,
        image_size: int = 224,
        patch_size: int = 16,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        max_text_len: int = 40,
        dropout: float = 0.1,
        tap_layer: int = -1,
        mlm_vocab_size: int | None = None,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__(task, num_classes)
        self.tokenizer_path = str(tokenizer)
        self.text_processor, vocab_size = load_text_processor(tokenizer, max_text_len)
        self.image_transform = ResizeNormalize(image_size, image_mean, image_std)
        self.model = BuiltinVLStudent(
            vocab_size=vocab_size,
            num_classes=num_classes if task == "classify" else 2,
            task=task,
            image_size=image_size,
            patch_size=patch_size,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            max_text_len=max_text_len,
            dropout=dropout,
            tap_layer=tap_layer,
            mlm_vocab_size=mlm_vocab_size,
        )

    @property
    def hidden_dim(self) -> int:
        return self.model.hidden_dim

    def forward(self, inputs: dict[str, Any], token_choice: Tensor | None = None) -> StudentTokens:
        _require(inputs, ("pixel_values", "input_ids", "attention_mask", "word_ids"))
        out = self.model(
            inputs["pixel_values"],
            inputs["input_ids"],
            inputs["attention_mask"],
            word_ids=inputs["word_ids"],
            token_choice=token_choice if self.task == "multiple_choice" else None,
        )
        return out.tokens


def _require(inputs: dict[str, Any], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(
            f"student inputs lack {missing} (have {sorted(inputs)}); build the collator with the "
            "student's image_transform and text_processor"
        )
