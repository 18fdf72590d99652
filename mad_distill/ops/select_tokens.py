"""Masked per-row top-k token selection.

``select_tokens_reference`` is the ground truth, and also the public :func:`select_tokens` on
every device: there is no Triton kernel, by decision. Selection runs once per batch on a
``[B, N]`` score tensor (N is a few hundred tokens: kilobytes), so the op is one masked fill, one
sort and a few tiny element-wise launches; their cost is launch latency, which a custom kernel
would not remove in any amount that matters next to the ``[B, N, C]`` KL. ``torch.topk`` is not
used either: on CUDA it does not promise an order among equal scores, and the contract here is
ties -> lower position (deterministic selections, same result on CPU and GPU); a stable sort
gives that. ``benchmarks/kernels.py`` times the stable sort against ``torch.topk``
(``select_tokens`` in its JSON). On an H200 (``benchmarks/results/kernels-nvidia-h200.json``):
0.10-0.23 ms for the stable sort path against 0.024-0.037 ms for ``torch.topk`` at
``[8, 1024]``, ``[64, 237]`` and ``[256, 237]``, about 0.1-0.2 ms per step next to 0.8 ms for the
KL. Deterministic ties are kept at that price.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_scores_and_mask(scores: Tensor, mask: Tensor) -> None:
    """Raise unless ``scores`` is floating ``[B, N]`` and ``mask`` a bool tensor of its shape."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    if tuple(mask.shape) != tuple(scores.shape):
        raise ValueError(
            f"mask must have the shape of scores {tuple(scores.shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating point, got {scores.dtype}")


def _check_select_inputs(scores: Tensor, mask: Tensor, k: int) -> None:
    check_scores_and_mask(scores, mask)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if k > scores.shape[1]:
        raise ValueError(f"k={k} is larger than the number of tokens N={scores.shape[1]}")


def select_tokens_reference(
    scores: Tensor, mask: Tensor, k: int, k_per_row: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Top-``k`` valid tokens per row, highest score first.

    Args:
        scores: ``[B, N]`` float scores (NaN is treated as an error by the caller).
        mask: ``[B, N]`` bool, True for tokens that may be selected.
        k: width of the output (``0 <= k <= N``).
        k_per_row: ``[B]`` long, how many to keep in each row (``<= k``); default ``k``.
            Each row keeps ``min(k_per_row[b], n_valid[b])`` tokens.

    Returns:
        ``index [B, k]`` long (token positions, -1 where nothing is selected) and
        ``valid [B, k]`` bool. Ties break towards the lower position.
    """
    _check_select_inputs(scores, mask, k)
    b, n = scores.shape
    if k == 0:
        empty = torch.empty(b, 0, dtype=torch.long, device=scores.device)
        return empty, empty.bool()
    masked = scores.float().masked_fill(~mask, float("-inf"))
    # stable sort: equal scores keep their position order, so results are deterministic
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
    n_valid = mask.sum(dim=1)
    keep = n_valid if k_per_row is None else torch.minimum(k_per_row.to(n_valid), n_valid)
    keep = keep.clamp(max=k)
    valid = torch.arange(k, device=scores.device).unsqueeze(0) < keep.unsqueeze(1)
    index = torch.where(valid, order, torch.full_like(order, -1))
    return index, valid


#: the public op (see the module docstring for why it is the reference on every device)
select_tokens = select_tokens_reference
