"""Token selection (TS): score each token, keep the top ``k`` valid tokens per instance.

MAD distils a dynamically chosen subset of tokens per instance (arXiv 2204.10496, abstract); the
score sources and the ``k`` rule are our design (DESIGN.md section 1):

- ``relevance``: cosine of each teacher token with the *other* modality's pooled teacher
  embedding (:func:`relevance_scores`);
- ``attention``: the teacher's last-layer attention from its CLS/pooled token
  (:func:`attention_scores`);
- ``discrepancy``: student-teacher distance after projection (:func:`discrepancy_scores`);
- ``given``: user-supplied scores (:func:`given_scores`).

All scores are detached: selection is a discrete choice and gets no gradient.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

from mad_distill._dispatch import call_op
from mad_distill.config import FEATURE_LOSSES, SCORE_SOURCES
from mad_distill.ops._utils import require
from mad_distill.ops.select_tokens import check_scores_and_mask

# ratios become exact fractions so that ceil(0.7 * 10) is 7, not 8 from 7.000000000000001
_MAX_DENOMINATOR = 1_000_000


def relevance_scores(teacher_tokens_joint: Tensor, other_pooled: Tensor) -> Tensor:
    """Cosine similarity of each teacher token with the other modality's pooled embedding.

    Args:
        teacher_tokens_joint: ``[B, T, e]`` teacher tokens in the joint image-text space.
        other_pooled: ``[B, e]`` pooled embedding of the other modality (for image patches the
            CLIP text embedding, for text tokens the CLIP image embedding).

    Returns:
        ``[B, T]`` fp32 scores in ``[-1, 1]``, detached.
    """
    if teacher_tokens_joint.dim() != 3:
        raise ValueError(
            f"teacher_tokens_joint must be [B, T, e], got shape {tuple(teacher_tokens_joint.shape)}"
        )
    b, _, e = teacher_tokens_joint.shape
    if tuple(other_pooled.shape) != (b, e):
        raise ValueError(
            f"other_pooled must be [B, e] = {(b, e)} to match teacher_tokens_joint, got "
            f"{tuple(other_pooled.shape)}"
        )
    tokens = F.normalize(teacher_tokens_joint.detach().float(), dim=-1)
    pooled = F.normalize(other_pooled.detach().float(), dim=-1)
    return torch.einsum("bte,be->bt", tokens, pooled)


def attention_scores(attention: Tensor) -> Tensor:
    """The teacher's last-layer attention from its CLS/pooled token.

    Args:
        attention: ``[B, T]`` (already averaged over heads) or ``[B, H, T]`` (averaged here).

    Returns:
        ``[B, T]`` fp32 scores, detached.
    """
    if attention.dim() == 3:
        attention = attention.mean(dim=1)
    if attention.dim() != 2:
        raise ValueError(
            f"attention must be [B, T] or [B, H, T], got shape {tuple(attention.shape)}"
        )
    if not attention.is_floating_point():
        raise TypeError(f"attention must be floating point, got {attention.dtype}")
    return attention.detach().float()


def discrepancy_scores(student_proj: Tensor, teacher: Tensor, loss: str = "cosine") -> Tensor:
    """Per-token student-teacher distance, with the feature loss's own per-token ``loss``.

    Args:
        student_proj: ``[B, N, D]`` student tokens projected into teacher space.
        teacher: ``[B, N, D]`` teacher targets aligned to the student tokens.
        loss: ``cosine`` (1 - cos), ``mse`` or ``smooth_l1`` on L2-normalised features.

    Returns:
        ``[B, N]`` fp32 distances, detached (higher = disagree more = distil first).
    """
    if loss not in FEATURE_LOSSES:
        raise ValueError(f"loss must be one of {FEATURE_LOSSES}, got {loss!r}")
    if student_proj.dim() != 3 or tuple(teacher.shape) != tuple(student_proj.shape):
        raise ValueError(
            f"student_proj and teacher must both be [B, N, D] of one shape, got "
            f"{tuple(student_proj.shape)} and {tuple(teacher.shape)}"
        )
    s = F.normalize(student_proj.detach().float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    if loss == "cosine":
        return 1.0 - (s * t).sum(-1)
    if loss == "mse":
        return ((s - t) ** 2).mean(-1)
    return F.smooth_l1_loss(s, t, reduction="none").mean(-1)


def given_scores(scores: Tensor, shape: tuple[int, int] | None = None) -> Tensor:
    """User-supplied scores (``MADBatch.scores``), checked against the expected ``[B, N]``."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"given scores must be a tensor, got {type(scores).__name__}")
    if scores.dim() != 2 or (shape is not None and tuple(scores.shape) != tuple(shape)):
        want = "[B, N]" if shape is None else f"[B, N] = {tuple(shape)}"
        raise ValueError(f"given scores must be {want}, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"given scores must be floating point, got {scores.dtype}")
    return scores.detach().float()


def compute_scores(
    source: str,
    *,
    teacher_tokens_joint: Tensor | None = None,
    other_pooled: Tensor | None = None,
    attention: Tensor | None = None,
    student_proj: Tensor | None = None,
    teacher: Tensor | None = None,
    given: Tensor | None = None,
    loss: str = "cosine",
) -> Tensor:
    """Scores of one ``source`` (see :data:`mad_distill.config.SCORE_SOURCES`) from the inputs
    that source needs; raises naming the missing input."""
    needs = {
        "relevance": {"teacher_tokens_joint": teacher_tokens_joint, "other_pooled": other_pooled},
        "attention": {"attention": attention},
        "discrepancy": {"student_proj": student_proj, "teacher": teacher},
        "given": {"given": given},
    }
    if source not in needs:
        raise ValueError(f"source must be one of {SCORE_SOURCES}, got {source!r}")
    missing = [name for name, value in needs[source].items() if value is None]
    if missing:
        raise ValueError(f"score source {source!r} needs {missing}, which were not given")
    if source == "relevance":
        return relevance_scores(teacher_tokens_joint, other_pooled)
    if source == "attention":
        return attention_scores(attention)
    if source == "discrepancy":
        return discrepancy_scores(student_proj, teacher, loss)
    return given_scores(given)


def _ratio_fraction(ratio: float) -> Fraction:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"ratio must be a number in (0, 1], got {type(ratio).__name__} {ratio!r}")
    if not 0 < ratio <= 1:  # also rejects NaN
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return Fraction(ratio).limit_denominator(_MAX_DENOMINATOR)


def select_tokens(
    scores: Tensor,
    mask: Tensor,
    *,
    k: int | None = None,
    ratio: float | None = None,
    backend: str = "auto",
    check_finite: bool = True,
) -> tuple[Tensor, Tensor]:
    """Top-scoring valid tokens per row, highest first (ties: lower position first).

    Give exactly one of:
        k: fixed count; each row keeps ``min(k, n_valid_b)``; output width ``k`` (``0 <= k <= N``).
        ratio: each row keeps ``ceil(ratio * n_valid_b)``; output width ``ceil(ratio * N)``.
            The per-row counts stay on the device (no host sync to size the output).

    Args:
        scores: ``[B, N]`` float scores.
        mask: ``[B, N]`` bool, True where a token may be selected. All-masked rows select nothing.
        backend: ``auto`` | ``triton`` | ``reference`` (see :mod:`mad_distill._dispatch`).
        check_finite: raise if a valid position has a NaN/inf score (one host sync).

    Returns:
        ``index [B, width]`` long, token positions padded with -1, and ``valid [B, width]`` bool.
    """
    check_scores_and_mask(scores, mask)
    n = scores.shape[1]
    if (k is None) == (ratio is None):
        raise ValueError(f"give exactly one of k and ratio, got k={k!r}, ratio={ratio!r}")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if k > n:
            raise ValueError(f"k={k} is larger than the number of tokens N={n}")
        width, k_per_row = k, None
    else:
        frac = _ratio_fraction(ratio)
        num, den = frac.numerator, frac.denominator
        width = -(-n * num // den)  # exact ceil(ratio * N)
        n_valid = mask.sum(dim=1)
        k_per_row = (n_valid * num + den - 1) // den  # exact ceil(ratio * n_valid), on device
    if check_finite:
        require(
            torch.isfinite(scores).logical_or(~mask),
            "scores has NaN or inf at valid (mask=True) positions",
        )
    index, valid = call_op("select_tokens", scores, mask, width, k_per_row, backend=backend)
    return index, valid
