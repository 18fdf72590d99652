"""VQA v2 finetuning with MAD (LightningCLI + YAML).

Usage (from the repository root)::

    python examples/vqa_finetune.py fit --config examples/configs/vqa_builtin.yaml
    python examples/vqa_finetune.py fit --config examples/configs/vqa_vilt.yaml
    python examples/vqa_finetune.py validate --config examples/configs/vqa_vilt.yaml \\
        --ckpt_path runs/vqa_vilt/checkpoints/last.ckpt

Any YAML field can be overridden on the command line, e.g. ``--data.init_args.fraction 0.05``
(low-shot) or ``--model.init_args.mad null`` (finetuning baseline without distillation). The
module and data module are :class:`mad_distill.tasks.VQAModule` and
:class:`mad_distill.tasks.VQADataModule` (or subclasses named in the YAML).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mad_distill.tasks import VQADataModule, VQAModule
from mad_distill.tasks.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    run_cli(argv, model_class=VQAModule, datamodule_class=VQADataModule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
