"""Task finetunes (VQA v2, SNLI-VE, VCR) with MAD: LightningModules, DataModules, students, CLI."""

from mad_distill.tasks.common import TaskDataModule, TaskModule
from mad_distill.tasks.snli_ve import SNLIVEDataModule, SNLIVEModule
from mad_distill.tasks.students import BuiltinTaskStudent, TaskStudent
from mad_distill.tasks.vcr import VCRDataModule, VCRModule
from mad_distill.tasks.vqa import VQADataModule, VQAModule

__all__ = [
    "BuiltinTaskStudent",
    "SNLIVEDataModule",
    "SNLIVEModule",
    "TaskDataModule",
    "TaskModule",
    "TaskStudent",
    "VCRDataModule",
    "VCRModule",
    "VQADataModule",
    "VQAModule",
]
