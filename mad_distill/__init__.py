"""mad-distill: Multimodal Adaptive Distillation for vision-language models.

The public API is re-exported here and imported lazily, so ``import mad_distill`` (and the
``mad-distill`` command's help) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # core
    "MADConfig": "mad_distill.config",
    "SelectConfig": "mad_distill.config",
    "WeightConfig": "mad_distill.config",
    "FeatConfig": "mad_distill.config",
    "KLConfig": "mad_distill.config",
    "ScheduleConfig": "mad_distill.config",
    "MADMixin": "mad_distill.mixin",
    "MADTeacherOutputs": "mad_distill.mixin",
    "MADBatch": "mad_distill.types",
    "StudentTokens": "mad_distill.types",
    "TeacherImageOutput": "mad_distill.types",
    "TeacherTextOutput": "mad_distill.types",
    "select_tokens": "mad_distill.selection",
    "confidence_weights": "mad_distill.weighting",
    "group_class_logits": "mad_distill.class_groups",
    "feature_distill_loss": "mad_distill.losses",
    "token_kl_loss": "mad_distill.losses",
    "instance_kl_loss": "mad_distill.losses",
    "lambda_at": "mad_distill.schedules",
    "Projector": "mad_distill.align",
    # teachers
    "Teacher": "mad_distill.teachers",
    "OpenCLIPTeacher": "mad_distill.teachers",
    "HFTextTeacher": "mad_distill.teachers",
    "create_teacher": "mad_distill.teachers",
    "register_teacher_alias": "mad_distill.teachers",
    # students and hooks
    "BuiltinVLStudent": "mad_distill.students",
    "WordTokenizer": "mad_distill.students",
    "FeatureTap": "mad_distill.hooks",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mad_distill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from mad_distill.align import Projector
    from mad_distill.class_groups import group_class_logits
    from mad_distill.config import (
        FeatConfig,
        KLConfig,
        MADConfig,
        ScheduleConfig,
        SelectConfig,
        WeightConfig,
    )
    from mad_distill.hooks import FeatureTap
    from mad_distill.losses import feature_distill_loss, instance_kl_loss, token_kl_loss
    from mad_distill.mixin import MADMixin, MADTeacherOutputs
    from mad_distill.schedules import lambda_at
    from mad_distill.selection import select_tokens
    from mad_distill.students import BuiltinVLStudent, WordTokenizer
    from mad_distill.teachers import (
        HFTextTeacher,
        OpenCLIPTeacher,
        Teacher,
        create_teacher,
        register_teacher_alias,
    )
    from mad_distill.types import MADBatch, StudentTokens, TeacherImageOutput, TeacherTextOutput
    from mad_distill.weighting import confidence_weights
