"""VCR accuracies: Q->A, QA->R and Q->AR (Zellers et al., CVPR 2019, Sec. 5).

Q->A and QA->R are two 4-way problems; QA->R is conditioned on the *right* answer. Q->AR counts an
example as right only when both its answer and its rationale predictions are right.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

VCR_NUM_CHOICES = 4


def _choice(preds: Tensor, name: str) -> Tensor:
    if preds.dim() == 2:
        if preds.shape[1] != VCR_NUM_CHOICES:
            raise ValueError(
                f"{name} scores must be [B, {VCR_NUM_CHOICES}], got {tuple(preds.shape)}"
            )
        return preds.argmax(-1)
    if preds.dim() != 1 or preds.is_floating_point():
        raise ValueError(
            f"{name} must be [B] choice indices or [B, 4] scores, got "
            f"{tuple(preds.shape)} {preds.dtype}"
        )
    return preds


def _check_labels(labels: Tensor, b: int, name: str) -> Tensor:
    if tuple(labels.shape) != (b,):
        raise ValueError(f"{name} must have shape [B] = ({b},), got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= VCR_NUM_CHOICES):
        raise ValueError(f"{name} must be in [0, {VCR_NUM_CHOICES}), got {labels.tolist()}")
    return labels


def _correct(preds: Tensor, labels: Tensor | None, problem: str) -> Tensor:
    """``[B]`` bool: which of ``{problem}_preds`` match ``{problem}_labels``."""
    if labels is None:
        raise ValueError(f"{problem}_labels are required with {problem}_preds")
    p = _choice(preds, f"{problem}_preds")
    lab = _check_labels(labels, p.shape[0], f"{problem}_labels")
    return p.long() == lab.long()


def _vcr_accuracy_update(
    answer_preds: Tensor | None,
    answer_labels: Tensor | None,
    rationale_preds: Tensor | None,
    rationale_labels: Tensor | None,
) -> Tensor:
    """``[6]`` sums: q2a correct/total, qa2r correct/total, q2ar correct/total."""
    out = torch.zeros(6, dtype=torch.float64)
    a_ok = r_ok = None
    if answer_preds is not None:
        a_ok = _correct(answer_preds, answer_labels, "answer")
        out[0], out[1] = a_ok.sum(), a_ok.numel()
    if rationale_preds is not None:
        r_ok = _correct(rationale_preds, rationale_labels, "rationale")
        out[2], out[3] = r_ok.sum(), r_ok.numel()
    if a_ok is not None and r_ok is not None:
        if a_ok.shape != r_ok.shape:
            raise ValueError(
                f"answer and rationale batches differ: {a_ok.shape[0]} vs {r_ok.shape[0]}"
            )
        both = a_ok & r_ok
        out[4], out[5] = both.sum(), both.numel()
    return out


def _vcr_accuracy_compute(sums: Tensor) -> dict[str, Tensor]:
    nan = torch.tensor(math.nan, dtype=torch.float64, device=sums.device)
    div = lambda c, t: c / t if t > 0 else nan
    return {
        "q2a": div(sums[0], sums[1]),
        "qa2r": div(sums[2], sums[3]),
        "q2ar": div(sums[4], sums[5]),
    }


class VCRAccuracy(Metric):
    """VCR Q->A, QA->R and Q->AR accuracy (DDP: one summed state).

    ``update(answer_preds, answer_labels, rationale_preds, rationale_labels)``: preds are ``[B]``
    choice indices or ``[B, 4]`` scores; either pair may be None (then only the other accuracy,
    and no Q->AR, is counted for that batch). ``compute()`` returns ``{"q2a", "qa2r", "q2ar"}``
    in [0, 1] (NaN if never counted).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sums", default=torch.zeros(6, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        answer_preds: Tensor | None,
        answer_labels: Tensor | None,
        rationale_preds: Tensor | None = None,
        rationale_labels: Tensor | None = None,
    ) -> None:
        s = _vcr_accuracy_update(answer_preds, answer_labels, rationale_preds, rationale_labels)
        self.sums += s.to(self.sums.device)

    def compute(self) -> dict[str, Tensor]:
        return _vcr_accuracy_compute(self.sums)
