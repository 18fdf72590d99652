"""Alignment between student tokens and teacher tokens.

Text: every tokenizer's tokens are mapped to the words of :func:`split_words` (by character
offsets), so two tokenizers meet at the word level. Image: teacher patch grids are resized to the
student's grid (:func:`resize_grid`), or pooled inside a region-based student's boxes
(:func:`pool_boxes`). Student tokens reach teacher space through a learned :class:`Projector`
(DESIGN.md section 1, "Alignment").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from mad_distill.config import PROJECTORS
from mad_distill.ops._utils import require

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the words of ``text``.

    A word is a run of word characters or a single punctuation character; every tokenizer's
    pieces are reduced to these words.
    """
    return [m.span() for m in _WORD_RE.finditer(text)]


def word_ids_from_offsets(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[int]:
    """Word index for each token given its character ``offsets`` (``(0, 0)`` = special token).

    A token belongs to the word whose span contains its first non-space character; tokens that
    touch no word (special tokens, whitespace pieces) get -1.
    """
    ids: list[int] = []
    w = 0
    for start, end in offsets:
        if end <= start:
            ids.append(-1)
            continue
        # spans are sorted and tokens arrive in order, so a moving pointer suffices
        while w < len(spans) and spans[w][1] <= start:
            w += 1
        probe = w
        while probe < len(spans) and spans[probe][0] < end:
            if spans[probe][1] > start:
                break
            probe += 1
        if probe < len(spans) and spans[probe][0] < end and spans[probe][1] > start:
            ids.append(probe)
        else:
            ids.append(-1)
    return ids


def text_word_ids(
    texts: Sequence[str], offsets: Tensor | Sequence[Sequence[tuple[int, int]]]
) -> tuple[Tensor, Tensor]:
    """Word ids of a tokenized batch, from a tokenizer's ``offset_mapping``.

    Args:
        texts: ``B`` strings that were tokenized.
        offsets: ``[B, T, 2]`` character offsets (``return_offsets_mapping=True``; ``(0, 0)``
            for special tokens and padding), as a tensor or nested lists (rows may differ in
            length; they are padded with -1).

    Returns:
        ``word_ids [B, T]`` long (-1 for tokens in no word) and ``n_words [B]`` long, the number
        of words of each text (:func:`split_words`).
    """
    if isinstance(offsets, Tensor):
        if offsets.dim() != 3 or offsets.shape[-1] != 2:
            raise ValueError(f"offsets must be [B, T, 2], got shape {tuple(offsets.shape)}")
        rows = [[(int(a), int(b)) for a, b in row] for row in offsets.tolist()]
    else:
        rows = [[(int(a), int(b)) for a, b in row] for row in offsets]
    if len(rows) != len(texts):
        raise ValueError(f"offsets has {len(rows)} rows but texts has {len(texts)}")
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), -1, dtype=torch.long)
    n_words = torch.zeros(len(rows), dtype=torch.long)
    for b, (text, row) in enumerate(zip(texts, rows)):
        spans = split_words(text)
        n_words[b] = len(spans)
        if row:
            ids[b, : len(row)] = torch.tensor(word_ids_from_offsets(row, spans))
    return ids, n_words


class Projector(nn.Module):
    """Projection ``P`` of student tokens into a teacher's feature space (one per teacher).

    Args:
        d_student: student feature width ``d_s``.
        d_teacher: teacher feature width ``d_t``.
        kind: ``linear`` (one ``nn.Linear``) or ``mlp`` (Linear -> GELU -> Linear).
        hidden: width of the MLP's hidden layer; default ``d_teacher``.

    Shapes: ``[..., d_s] -> [..., d_t]``.
    """

    def __init__(
        self, d_student: int, d_teacher: int, kind: str = "linear", hidden: int | None = None
    ) -> None:
        super().__init__()
        for name, value in (("d_student", d_student), ("d_teacher", d_teacher)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if kind not in PROJECTORS:
            raise ValueError(f"kind must be one of {PROJECTORS}, got {kind!r}")
        if kind == "linear":
            if hidden is not None:
                raise ValueError("hidden is only used with kind='mlp'")
            self.net: nn.Module = nn.Linear(d_student, d_teacher)
        else:
            hidden = d_teacher if hidden is None else hidden
            if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
                raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
            self.net = nn.Sequential(
                nn.Linear(d_student, hidden), nn.GELU(), nn.Linear(hidden, d_teacher)
            )
        self.d_student, self.d_teacher, self.kind = d_student, d_teacher, kind

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.shape[-1] != self.d_student:
            raise ValueError(
                f"Projector expects [..., {self.d_student}] student tokens, got "
                f"{tuple(tokens.shape)}"
            )
        return self.net(tokens)


def _check_grid(grid: Any, name: str) -> tuple[int, int]:
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)
    ):
        raise ValueError(f"{name} must be a pair of ints >= 1 (h, w), got {grid!r}")
    return int(grid[0]), int(grid[1])


def _grid_tokens(tokens: Tensor, grid: tuple[int, int], name: str) -> Tensor:
    """``[B, P, d]`` row-major tokens -> ``[B, d, gh, gw]`` maps."""
    if tokens.dim() != 3:
        raise ValueError(f"{name} must be [B, P, d], got shape {tuple(tokens.shape)}")
    gh, gw = grid
    b, p, d = tokens.shape
    if p != gh * gw:
        raise ValueError(f"{name} has P = {p} tokens but the grid {grid} has {gh * gw}")
    return tokens.transpose(1, 2).reshape(b, d, gh, gw)


def resize_grid(tokens: Tensor, grid: tuple[int, int], target: tuple[int, int]) -> Tensor:
    """Bilinearly resize a patch-token grid (teacher grid -> student grid).

    Args:
        tokens: ``[B, P, d]`` tokens in row-major order over ``grid``.
        grid: ``(gh, gw)`` with ``gh * gw = P``.
        target: ``(sh, sw)`` the student's grid.

    Returns:
        ``[B, sh * sw, d]`` (``F.interpolate``, bilinear, ``align_corners=False``); the input
        itself when the grids are equal.
    """
    grid = _check_grid(grid, "grid")
    target = _check_grid(target, "target")
    maps = _grid_tokens(tokens, grid, "tokens")
    if grid == target:
        return tokens
    dtype = tokens.dtype
    # interpolate in fp32: half-precision bilinear kernels are missing or lossy on some devices
    out = F.interpolate(maps.float(), size=target, mode="bilinear", align_corners=False)
    return out.flatten(2).transpose(1, 2).to(dtype)


def pool_words(tokens: Tensor, word_ids: Tensor, n_words: int) -> tuple[Tensor, Tensor]:
    """Average the pieces of each word (tokenizer-independent text alignment).

    Args:
        tokens: ``[B, T, d]`` token features.
        word_ids: ``[B, T]`` long, word index per token in ``[0, n_words)``, -1 for none.
        n_words: ``W``, the width of the output.

    Returns:
        ``words [B, W, d]`` (mean of the pieces of each word, 0 for words with no piece) and
        ``mask [B, W]`` bool (the word has at least one piece). Vectorised (``index_add``).
    """
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be [B, T, d], got shape {tuple(tokens.shape)}")
    b, t, d = tokens.shape
    if tuple(word_ids.shape) != (b, t):
        raise ValueError(f"word_ids must be [B, T] = {(b, t)}, got {tuple(word_ids.shape)}")
    if word_ids.dtype.is_floating_point or word_ids.dtype == torch.bool:
        raise TypeError(f"word_ids must be an integer tensor, got {word_ids.dtype}")
    if isinstance(n_words, bool) or not isinstance(n_words, int) or n_words < 0:
        raise ValueError(f"n_words must be an int >= 0, got {n_words!r}")
    if word_ids.numel():
        require(
            (word_ids >= -1) & (word_ids < n_words),
            f"word_ids must be in [0, n_words) = [0, {n_words}) or -1",
        )
    ids = word_ids.long()
    valid = ids >= 0
    # flat bucket b * W + w; tokens in no word go to one extra bucket that is dropped (no sync)
    rows = torch.arange(b, device=ids.device).unsqueeze(1) * n_words
    flat = torch.where(valid, rows + ids, torch.full_like(ids, b * n_words)).reshape(-1)
    acc = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
    sums = tokens.new_zeros(b * n_words + 1, d, dtype=acc)
    sums = sums.index_add(0, flat, tokens.reshape(b * t, d).to(acc))
    counts = torch.zeros(b * n_words + 1, device=ids.device, dtype=acc)
    counts = counts.index_add(0, flat, valid.reshape(-1).to(acc))
    sums, counts = sums[:-1].reshape(b, n_words, d), counts[:-1].reshape(b, n_words)
    words = sums / counts.clamp(min=1).unsqueeze(-1)
    return words.to(tokens.dtype), counts > 0


def gather_words(words: Tensor, word_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast per-word features back to tokens (e.g. teacher words -> student pieces).

    Args:
        words: ``[B, W, d]`` per-word features (from :func:`pool_words`).
        word_ids: ``[B, N]`` long, word index per token, -1 for none.

    Returns:
        ``[B, N, d]`` features (0 where the token has no word) and ``valid [B, N]`` bool.
    """
    if words.dim() != 3:
        raise ValueError(f"words must be [B, W, d], got shape {tuple(words.shape)}")
    b, w, d = words.shape
    if word_ids.dim() != 2 or word_ids.shape[0] != b:
        raise ValueError(f"word_ids must be [B, N] with B = {b}, got {tuple(word_ids.shape)}")
    if word_ids.numel():
        require((word_ids >= -1) & (word_ids < w), f"word_ids must be in [0, W) = [0, {w}) or -1")
    ids = word_ids.long()
    valid = ids >= 0
    if w == 0:  # no words: every id is -1 (checked above), nothing to gather
        return words.new_zeros(b, ids.shape[1], d), valid
    out = torch.gather(words, 1, ids.clamp(min=0).unsqueeze(-1).expand(-1, -1, d))
    return out * valid.unsqueeze(-1).to(out.dtype), valid


def pool_boxes(
    grid_tokens: Tensor, grid: tuple[int, int], boxes: Tensor, output_size: int = 2
) -> Tensor:
    """Pool teacher patch tokens inside region boxes (for region-based students).

    Args:
        grid_tokens: ``[B, P, d]`` teacher tokens, row-major over ``grid``.
        grid: ``(gh, gw)``.
        boxes: ``[B, R, 4]`` boxes ``(x1, y1, x2, y2)`` normalised to ``[0, 1]`` of the image.
        output_size: RoIAlign bins per side before averaging (``torchvision.ops.roi_align``,
            ``aligned=True``, adaptive sampling).

    Returns:
        ``[B, R, d]`` the mean of the RoIAlign bins of each box.
    """
    grid = _check_grid(grid, "grid")
    maps = _grid_tokens(grid_tokens, grid, "grid_tokens")
    b, d = maps.shape[:2]
    if boxes.dim() != 3 or boxes.shape[0] != b or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B, R, 4] with B = {b}, got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be floating point, got {boxes.dtype}")
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be an int >= 1, got {output_size!r}")
    r = boxes.shape[1]
    if boxes.numel():
        bx = boxes.detach()
        ok = (bx >= 0).all() & (bx <= 1).all() & (bx[..., 2] >= bx[..., 0]).all()
        ok &= (bx[..., 3] >= bx[..., 1]).all()
        require(ok, "boxes must be normalised xyxy in [0, 1] with x2 >= x1 and y2 >= y1")
    dtype = grid_tokens.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    gh, gw = grid
    scale = boxes.new_tensor([gw, gh, gw, gh]).to(work)
    batch_idx = torch.arange(b, device=boxes.device, dtype=work).repeat_interleave(r)
    rois = torch.cat([batch_idx.unsqueeze(1), boxes.to(work).reshape(-1, 4) * scale], dim=1)
    pooled = roi_align(maps.to(work), rois, output_size=output_size, aligned=True)
    return pooled.mean(dim=(2, 3)).reshape(b, r, d).to(dtype)
