"""SNLI-VE finetuning with MAD (LightningCLI + YAML).

Usage (from the repository root)::

    python examples/snli_ve_finetune.py fit --config examples/configs/snli_ve_builtin.yaml
    python examples/snli_ve_finetune.py fit --config examples/configs/snli_ve_vilt.yaml
    python examples/snli_ve_finetune.py validate --config examples/configs/snli_ve_vilt.yaml \\
        --ckpt_path runs/snli_ve_vilt/checkpoints/last.ckpt

Any YAML field can be overridden on the command line, e.g. ``--data.init_args.fraction 0.05``
(low-shot) or ``--model.init_args.mad null`` (finetuning baseline without distillation). The
module and data module are :class:`mad_distill.tasks.SNLIVEModule` and
:class:`mad_distill.tasks.SNLIVEDataModule` (or subclasses named in the YAML).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mad_distill.tasks import SNLIVEDataModule, SNLIVEModule
from mad_distill.tasks.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    run_cli(argv, model_class=SNLIVEModule, datamodule_class=SNLIVEDataModule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
