"""Data containers passed between the student, the teachers and the MAD core.

Shapes: ``B`` batch, ``N`` student tokens, ``T`` teacher tokens, ``W`` words, ``C`` classes /
candidates, ``d`` feature widths. Token kinds follow :data:`TEXT`, :data:`IMAGE`, :data:`OTHER`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

#: token kind codes used in ``StudentTokens.kinds``
TEXT: int = 0
IMAGE: int = 1
OTHER: int = -1  # CLS, SEP, padding, region tokens without a teacher target


def _to(obj: Any, device: torch.device | str) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    return obj


@dataclass
class StudentTokens:
    """What the student exposes to MAD.

    Args:
        hidden: ``[B, N, d_s]`` token features (image and text tokens of the cross-modal encoder).
        mask: ``[B, N]`` bool, True for valid tokens.
        kinds: ``[B, N]`` long, :data:`TEXT` / :data:`IMAGE` / :data:`OTHER` per token.
        word_ids: ``[B, N]`` long, index of the word (see :func:`mad_distill.align.split_words`)
            each text token belongs to, -1 for non-text tokens.
        image_grid: ``(h, w)`` of the student's image tokens, which appear in row-major order
            among the tokens whose kind is :data:`IMAGE`.
        logits: ``[B, C]`` task logits (for instance-level KL), optional.
        mlm_logits: ``[B, N, V]`` the student's MLM-head logits over the text teacher's vocabulary,
            optional (token-level KL).
    """

    hidden: Tensor
    mask: Tensor
    kinds: Tensor
    word_ids: Tensor | None = None
    image_grid: tuple[int, int] | None = None
    logits: Tensor | None = None
    mlm_logits: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, Tensor) or self.hidden.dim() != 3:
            got = tuple(self.hidden.shape) if isinstance(self.hidden, Tensor) else type(self.hidden)
            raise ValueError(f"StudentTokens.hidden must be a [B, N, d] tensor, got {got}")
        b, n, _ = self.hidden.shape
        for name in ("mask", "kinds", "word_ids"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (b, n):
                raise ValueError(
                    f"StudentTokens.{name} must have shape [B, N] = {(b, n)}, got {tuple(t.shape)}"
                )
        if self.mask.dtype != torch.bool:
            raise TypeError(f"StudentTokens.mask must be bool, got {self.mask.dtype}")
        if self.logits is not None and (self.logits.dim() != 2 or self.logits.shape[0] != b):
            raise ValueError(
                f"StudentTokens.logits must be [B, C] with B = {b}, got {tuple(self.logits.shape)}"
            )
        if self.mlm_logits is not None and tuple(self.mlm_logits.shape[:2]) != (b, n):
            raise ValueError(
                f"StudentTokens.mlm_logits must be [B, N, V] with B, N = {(b, n)}, "
                f"got {tuple(self.mlm_logits.shape)}"
            )


@dataclass
class TeacherImageOutput:
    """A frozen image teacher's view of a batch.

    Args:
        tokens: ``[B, P, d_t]`` patch tokens (no CLS), row-major over ``grid``.
        grid: ``(gh, gw)`` patch grid.
        pooled: ``[B, e]`` pooled embedding (CLIP: in the joint image-text space).
        tokens_joint: ``[B, P, e]`` patch tokens mapped into the joint space (for relevance),
            optional.
        attention: ``[B, P]`` last-layer attention from the CLS token, mean over heads, optional.
    """

    tokens: Tensor
    grid: tuple[int, int]
    pooled: Tensor
    tokens_joint: Tensor | None = None
    attention: Tensor | None = None


@dataclass
class TeacherTextOutput:
    """A frozen text teacher's view of a batch.

    Args:
        tokens: ``[B, T, d_t]`` token features.
        mask: ``[B, T]`` bool, valid (non-padding) tokens.
        word_ids: ``[B, T]`` long, word index per token (-1 for special tokens / padding).
        pooled: ``[B, e]`` pooled embedding.
        tokens_joint: ``[B, T, e]`` tokens in the joint image-text space (CLIP text tower),
            optional.
        attention: ``[B, T]`` last-layer attention from the pooled/CLS token, optional.
        mlm_logits: ``[B, T, V]`` MLM logits, optional.
    """

    tokens: Tensor
    mask: Tensor
    word_ids: Tensor
    pooled: Tensor
    tokens_joint: Tensor | None = None
    attention: Tensor | None = None
    mlm_logits: Tensor | None = None


@dataclass
class MADBatch:
    """The raw inputs the teachers need, carried beside the student's own batch.

    Args:
        teacher_images: ``[B, 3, H, W]`` images preprocessed for the image teacher.
        texts: ``B`` strings, the text the student reads (question / hypothesis / caption).
        labels: ``[B]`` long, ground-truth candidate index (for ``gt_prob`` / ``correct``
            weighting and for instance-level KL), optional.
        candidates: per-instance candidate texts (``B`` lists of ``C`` strings, e.g. VCR answers),
            or one shared list of ``C`` prompts (SNLI-VE label prompts, VQA answer vocabulary),
            for the teacher's zero-shot scores. Optional.
        scores: ``[B, N]`` user-given token scores for the ``given`` selection source, optional.
        keys: ``B`` stable example ids (for the teacher-feature cache), optional.
    """

    teacher_images: Tensor | None
    texts: list[str]
    labels: Tensor | None = None
    candidates: list[list[str]] | list[str] | None = None
    scores: Tensor | None = None
    keys: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.texts, (list, tuple)) or not all(
            isinstance(t, str) for t in self.texts
        ):
            raise TypeError("MADBatch.texts must be a list of strings")
        b = len(self.texts)
        if self.teacher_images is not None and self.teacher_images.shape[0] != b:
            raise ValueError(
                f"MADBatch.teacher_images has batch {self.teacher_images.shape[0]} but "
                f"MADBatch.texts has {b}"
            )
        if self.labels is not None and tuple(self.labels.shape) != (b,):
            raise ValueError(
                f"MADBatch.labels must have shape [B] = ({b},), got {tuple(self.labels.shape)}"
            )

    def to(self, device: torch.device | str) -> MADBatch:
        kw = {f.name: _to(getattr(self, f.name), device) for f in fields(self)}
        return MADBatch(**kw)
