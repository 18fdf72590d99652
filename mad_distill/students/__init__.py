"""Students: a small built-in cross-modal encoder and its word-level tokenizer."""

from mad_distill.students.builtin import TASKS, BuiltinStudentOutput, BuiltinVLStudent
from mad_distill.students.tokenizer import SPECIAL_TOKENS, WordTokenizer

__all__ = ["SPECIAL_TOKENS", "TASKS", "BuiltinStudentOutput", "BuiltinVLStudent", "WordTokenizer"]
