"""``mad-distill fit``: LightningCLI over the task modules, configured by YAML.

The YAML names the module and data module by ``class_path`` (e.g.
:class:`~mad_distill.tasks.vqa.VQAModule` with :class:`~mad_distill.tasks.vqa.VQADataModule`),
so one entry point runs every task; ``examples/*_finetune.py`` are thin wrappers. The data
module's ``num_classes`` and ``answers`` (the VQA answer vocabulary) are linked into the module
when both are built. Examples::

    mad-distill fit --config examples/configs/vqa_vilt.yaml
    python examples/vqa_finetune.py validate --config examples/configs/vqa_vilt.yaml \\
        --ckpt_path runs/vqa_vilt/.../checkpoints/last.ckpt
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mad_distill.tasks.common import TaskDataModule, TaskModule

__all__ = ["SUBCOMMANDS", "TaskCLI", "main", "run_cli"]

#: LightningCLI subcommands; ``main`` runs ``fit`` when none is given
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class TaskCLI(LightningCLI):
    """LightningCLI that links the data module's task facts into the module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("num_classes", "answers"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


def run_cli(
    argv: Sequence[str] | None = None,
    model_class: type[TaskModule] = TaskModule,
    datamodule_class: type[TaskDataModule] = TaskDataModule,
    **kwargs: Any,
) -> TaskCLI:
    """Run the CLI on ``argv`` (a subcommand first, as LightningCLI expects); returns it so a
    caller can read ``cli.trainer.callback_metrics``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        argv = ["fit", *argv]  # `mad-distill fit ARGS` arrives without its subcommand
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    with warnings.catch_warnings():
        # we pass sys.argv on ourselves (with "fit" added); LightningCLI warns about both
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        return TaskCLI(
            model_class,
            datamodule_class,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            **kwargs,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mad-distill fit [ARGS]`` (and ``python -m mad_distill.tasks.cli
    {fit,validate,test} ARGS``)."""
    run_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
