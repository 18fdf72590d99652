"""The ``mad-distill`` command.

Each subcommand lives in the module that owns the work and parses its own arguments; this file only
routes, and imports lazily so ``mad-distill --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module with a ``main(argv) -> int | None``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "mad_distill.bench.demo",
        "finetune the built-in student on the embedded world: baseline vs +TS vs +CW vs MAD",
    ),
    "bench": (
        "mad_distill.bench.harness",
        "run a YAML-configured low-shot / domain-shift benchmark grid (resumable)",
    ),
    "pretrain-teacher": (
        "mad_distill.data.world.pretrain",
        "pretrain the embedded world's CLIP teacher contrastively (deterministic)",
    ),
    "pretrain-student": (
        "mad_distill.data.world.student_pretrain",
        "VL-pretrain the built-in student on the embedded world (ITM + MLM, deterministic)",
    ),
    "zero-shot": (
        "mad_distill.data.world.zero_shot",
        "zero-shot accuracy of the world CLIP teacher per task and domain",
    ),
    "cache": (
        "mad_distill.cache",
        "precompute teacher features for a dataset split into safetensors shards",
    ),
    "vlkd": (
        "mad_distill.vlkd.bench",
        "VLKD on the embedded world: distil CLIP into a small BART, zero-shot VQA",
    ),
    "fit": (
        "mad_distill.tasks.cli",
        "finetune a VL model on VQA v2 / SNLI-VE / VCR with MAD (YAML)",
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mad-distill",
        description="Multimodal Adaptive Distillation for vision-language models.",
    )
    from mad_distill import __version__

    parser.add_argument("--version", action="version", version=f"mad-distill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] not in COMMANDS:
        # lets argparse print help / version / "invalid choice" with the list of commands
        parser.parse_args(argv)
        parser.print_help()
        return 2
    module_name, _ = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    result = module.main(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
