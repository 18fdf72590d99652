"""Class groups: a teacher whose zero-shot scores tell apart only coarser classes than the task's.

CLIP scores how well a text describes an image. On SNLI-VE that decides whether a hypothesis
holds (entailment or neutral) or not (contradiction), but not whether it adds detail no image can
verify (neutral vs entailment): the two prompts differ by exactly that detail. Distilling the
teacher's split between such classes teaches a coin flip. With ``class_groups`` (task class
``c`` belongs to group ``class_groups[c]``; SNLI-VE with CLIP: ``(0, 0, 1)``) the instance-level
KL and the confidence weights compare *group* probabilities (the sum of the class probabilities
in a group), so the teacher teaches what it can judge and the labels teach the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mad_distill.ops._utils import require


def check_class_groups(groups: Sequence[int], path: str = "class_groups") -> tuple[int, ...]:
    """``groups`` as a tuple of group ids ``0 .. G-1`` (each used, ``G >= 2``), or an error
    naming ``path``."""
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise TypeError(
            f"{path} must be a list of group ids, one per task class (e.g. [0, 0, 1]), got "
            f"{type(groups).__name__}"
        )
    out = []
    for i, g in enumerate(groups):
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise ValueError(f"{path}[{i}] must be a group id (an int >= 0), got {g!r}")
        out.append(int(g))
    used = sorted(set(out))
    if len(used) < 2:
        raise ValueError(
            f"{path} must name at least two groups (one group: the teacher tells nothing apart), "
            f"got {list(out)}"
        )
    if used != list(range(len(used))):
        raise ValueError(
            f"{path} must use every group id 0 .. G-1 (here G = {len(used)}), got {list(out)}"
        )
    return tuple(out)


def _membership(groups: Sequence[int], c: int, device: torch.device) -> Tensor:
    """``[C, G]`` bool: class ``c`` is in group ``g``."""
    if len(groups) != c:
        raise ValueError(
            f"class_groups has {len(groups)} entries but the logits have C = {c} classes: give "
            "one group id per task class"
        )
    g = torch.as_tensor(groups, dtype=torch.long, device=device)
    # the group count from the host-side list: g.max() would sync with the device every step
    return g.unsqueeze(1) == torch.arange(max(groups) + 1, device=device)


def group_class_logits(logits: Tensor, groups: Sequence[int], tau: float = 1.0) -> Tensor:
    """Group logits ``[B, G]`` from class logits ``[B, C]``: ``tau * LSE_{c in g}(z_c / tau)``.

    At temperature ``tau`` their softmax is the sum of the class probabilities in each group:
    ``softmax(g / tau)_k = sum_{c in k} softmax(z / tau)_c``, so they go to any KL or weight that
    takes logits. Differentiable; fp32.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    member = _membership(groups, logits.shape[1], logits.device)  # [C, G]
    z = (logits.float() / tau).unsqueeze(-1).masked_fill(~member, float("-inf"))
    return z.logsumexp(dim=1) * tau


def group_labels(labels: Tensor, groups: Sequence[int], ignore_index: int = -1) -> Tensor:
    """Class labels ``[B]`` mapped to their groups; ``ignore_index`` stays."""
    table = torch.as_tensor(groups, dtype=torch.long, device=labels.device)
    known = labels != ignore_index
    if labels.numel():
        require(
            ~known | ((labels >= 0) & (labels < len(groups))),
            f"labels must be class indices in [0, {len(groups)}) (one per class_groups entry) or "
            f"ignore_index={ignore_index}",
        )
    return torch.where(known, table[labels.long().clamp(min=0)], labels.long())


def best_class_in_best_group(logits: Tensor, groups: Sequence[int]) -> Tensor:
    """``[B]`` the teacher's label under class groups: its most probable group, and in it its
    highest-scoring class (so the label's group is the group the teacher is surest of)."""
    member = _membership(groups, logits.shape[1], logits.device)  # [C, G]
    best = group_class_logits(logits, groups).argmax(-1)  # [B]
    inside = member[:, best].T  # [B, C]
    return logits.float().masked_fill(~inside, float("-inf")).argmax(-1)
