"""torchmetrics ``Metric`` s for the real tasks; every state is a sum, so DDP reduction is exact."""

from mad_distill.metrics.accuracy import SNLI_VE_CLASSES, ClassAccuracy, SNLIVEAccuracy
from mad_distill.metrics.vcr import VCRAccuracy
from mad_distill.metrics.vqa import (
    VQA_ANSWER_TYPES,
    VQAAccuracy,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    soft_score,
    vqa_score,
)

__all__ = [
    "SNLI_VE_CLASSES",
    "VQA_ANSWER_TYPES",
    "ClassAccuracy",
    "SNLIVEAccuracy",
    "VCRAccuracy",
    "VQAAccuracy",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "soft_score",
    "vqa_score",
]
