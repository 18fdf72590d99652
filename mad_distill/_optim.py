"""The optimiser recipe shared by the world's pretraining runs and the benchmark runner.

AdamW with weight decay on weight matrices only, and a linear warm-up followed by a cosine
decay to 0 (the CLIP / ViLT recipe). The shipped weights and the committed results were made
with exactly these formulas; changing them changes those numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def decay_param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    embedding_key: str = "embed",
) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on matrices, none on biases, norms, scales and
    parameters whose name contains ``embedding_key`` (token / position embeddings)."""
    params = list(named_parameters)

    def decayed(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim >= 2 and embedding_key not in name

    return [
        {"params": [p for n, p in params if decayed(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in params if not decayed(n, p)], "weight_decay": 0.0},
    ]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """``LambdaLR`` factor: ``(s + 1) / warmup`` for ``s < warmup``, then a cosine from 1 to 0
    reached at ``total`` (and held there)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor
