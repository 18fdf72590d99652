"""Frozen teachers: open_clip CLIP towers and HF text encoders, built from spec strings.

>>> from mad_distill.teachers import create_teacher
>>> clip = create_teacher("open_clip:ViT-B-32@/path/weights.pt")  # doctest: +SKIP
>>> text = create_teacher("hf:/models/roberta-base")                # doctest: +SKIP
"""

from mad_distill.teachers.base import Teacher, weights_fingerprint
from mad_distill.teachers.clip import OpenCLIPTeacher
from mad_distill.teachers.factory import (
    TeacherSpec,
    create_teacher,
    list_teacher_aliases,
    list_teacher_prefixes,
    parse_teacher_spec,
    register_teacher_alias,
    register_teacher_prefix,
)
from mad_distill.teachers.text import HFTextTeacher

__all__ = [
    "HFTextTeacher",
    "OpenCLIPTeacher",
    "Teacher",
    "TeacherSpec",
    "create_teacher",
    "list_teacher_aliases",
    "list_teacher_prefixes",
    "parse_teacher_spec",
    "register_teacher_alias",
    "register_teacher_prefix",
    "weights_fingerprint",
]
