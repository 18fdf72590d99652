"""Multi-process helpers: what MAD must agree on across DDP / FSDP ranks.

Under data parallelism each rank sees ``B_local`` examples and DDP averages the gradients, so a
per-rank loss that is a mean over its own examples gives the gradient of the global mean, *if*
every per-example term is the same as in one process. Two things in MAD are batch statistics and
need the global batch:

* the confidence weights are normalised to mean 1 over the batch: the mean must be the global
  one (:func:`all_reduce_sum` is what :func:`~mad_distill.weighting.normalize_weights` gets);
* the logged parts (``mad/feat``, ``mad/kl``, ``mad/weight_mean``, ``mad/selected_frac``) are
  reduced in one fused all-reduce (:func:`reduce_mad_parts`), with ``selected_frac`` pooled over
  all selected / valid tokens rather than averaged per rank.

Everything here is a no-op in a single process (no ``torch.distributed`` group, or world size 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

__all__ = [
    "all_reduce_sum",
    "get_all_reduce",
    "is_distributed",
    "rank",
    "reduce_mad_parts",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` group with more than one process."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process' global rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks in place and return it (unchanged in one process).

    The tensor must be on a device the backend supports (CUDA for NCCL, CPU for gloo) and have
    the same shape on every rank; every rank must call it the same number of times.
    """
    if is_distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def get_all_reduce() -> Callable[[Tensor], Tensor] | None:
    """:func:`all_reduce_sum` in a multi-process run, else ``None`` (for ``normalize_weights``)."""
    return all_reduce_sum if is_distributed() else None


def reduce_mad_parts(
    parts: Mapping[str, Tensor], n_selected: Tensor, n_valid: Tensor
) -> dict[str, Tensor]:
    """Global values of the logged MAD parts, in one all-reduce.

    Args:
        parts: per-rank scalars ``feat``, ``kl``, ``weight_mean``, ``selected_frac`` (means over
            the rank's batch; ranks have equal batch sizes under a distributed sampler).
        n_selected: this rank's number of selected tokens (scalar).
        n_valid: this rank's number of valid tokens (scalar).

    Returns:
        ``feat``, ``kl``, ``weight_mean``: means over ranks; ``selected_frac``: all selected
        tokens / all valid tokens. Detached fp32 scalars. In one process, ``parts`` unchanged.
    """
    if not is_distributed():
        return dict(parts)
    names = ("feat", "kl", "weight_mean")
    device = n_valid.device
    stats = torch.stack(
        [parts[n].detach().float().to(device).reshape(()) for n in names]
        + [n_selected.detach().float().reshape(()), n_valid.detach().float().reshape(())]
    )
    all_reduce_sum(stats)
    out = {n: stats[i] / world_size() for i, n in enumerate(names)}
    out["selected_frac"] = stats[3] / stats[4].clamp(min=1)
    return out
