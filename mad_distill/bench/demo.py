"""``mad-distill demo``: what MAD is for, on the embedded world, in minutes on a laptop CPU.

Finetunes the built-in student on the world's low-shot splits (trained on the ``flat`` domain,
tested on ``flat`` and on the domain-shifted ``textured`` images) four ways — the plain baseline,
``+TS`` (token selection, uniform instance weights), ``+CW`` (all tokens, confidence weights) and
full MAD — and prints the accuracy table (mean ± std over seeds). The table (Markdown + JSON), a
plot and one JSON per run are written under ``--out-dir``; a rerun resumes (finished runs are
skipped).

The default is a representative subset of the grid (``bench/configs/demo.yaml``); the full grid
is ``mad-distill bench --config <package>/bench/configs/full.yaml``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

#: the packaged bench configs
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
FULL_CONFIG = CONFIG_DIR / "full.yaml"

#: ``--quick``: one seed, 1 % data, a short schedule and small test sets (a smoke run, ≤ 2 min;
#: its numbers are not meant to be read)
QUICK_OVERRIDES = {
    "fractions": [0.01],
    "seeds": [0],
    "train": {"epochs": 1, "min_steps": 8, "max_steps": 8, "test_size": 64},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mad-distill demo",
        description="Finetune the built-in student on the embedded world: baseline vs +TS vs "
        "+CW vs MAD, on low-shot and domain-shifted splits; print and save the table and plot.",
    )
    p.add_argument("--quick", action="store_true", help="a ≤ 2 minute smoke run (1 seed, 1 %%)")
    p.add_argument("--out-dir", default="mad_distill_runs/demo", help="where results go")
    p.add_argument("--config", help=f"bench YAML to run instead of {DEMO_CONFIG.name}")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's)")
    p.add_argument("--tasks", nargs="+", help="tasks (vqa, snli_ve, vcr, vcr_qa2r)")
    p.add_argument("--fractions", type=float, nargs="+", help="training fractions in (0, 1]")
    p.add_argument("--teacher", help="CLIP teacher spec (default: the shipped 'world-clip')")
    p.add_argument(
        "--student",
        help="student init: 'world-vl' (the shipped VL-pretrained student, default), 'scratch' "
        "or a .safetensors file from `mad-distill pretrain-student`",
    )
    p.add_argument(
        "--accelerator",
        choices=["cpu", "cuda", "gpu"],
        help="where runs train (the config's train.accelerator; default: cpu). CUDA results "
        "differ from CPU ones in the last bits, so they are stored as other runs",
    )
    p.add_argument("--threads", type=int, help="torch threads per run (default: all cores)")
    p.add_argument(
        "--workers",
        type=int,
        help="runs in parallel, one process and one thread each (default: the number of cores; "
        "1 runs in this process, with Lightning's progress bars)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bars")
    return p


def demo_bench(args: argparse.Namespace):
    """The :class:`~mad_distill.bench.harness.BenchConfig` a demo invocation runs."""
    from mad_distill.bench.harness import BenchConfig

    bench = BenchConfig.from_yaml(args.config or DEMO_CONFIG)
    train = dict(bench.train)
    if args.quick:
        bench.fractions = list(QUICK_OVERRIDES["fractions"])
        bench.seeds = list(QUICK_OVERRIDES["seeds"])
        train.update(QUICK_OVERRIDES["train"])
    if args.seeds:
        bench.seeds = list(args.seeds)
    if args.tasks:
        bench.tasks = list(args.tasks)
    if args.fractions:
        bench.fractions = list(args.fractions)
    if args.teacher:
        train["teacher"] = args.teacher
    if args.student:
        train["student"] = args.student
    if args.accelerator:
        train["accelerator"] = args.accelerator
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    bench.train = train
    bench.out_dir = args.out_dir
    bench.__post_init__()  # re-validate after the overrides
    from mad_distill.bench.world import check_task, train_options

    for task in bench.tasks:
        check_task(task)
    train_options(bench.train)
    return bench


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench = demo_bench(args)
    from mad_distill.bench.harness import run_bench, write_report
    from mad_distill.bench.world import RUNTIME, set_runtime

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if args.threads is not None and args.workers is None:
        workers = 1  # an explicit thread count asks for runs in this process
    saved = dict(RUNTIME)
    set_runtime(progress_bar=not args.no_progress, threads=args.threads)
    start = time.perf_counter()
    try:
        results = run_bench(bench, workers=workers, progress=not args.no_progress)
    finally:
        RUNTIME.update(saved)
    report = write_report(results, bench)
    minutes = (time.perf_counter() - start) / 60
    print()
    print(
        f"Accuracy (%), mean ± std over seeds {bench.seeds}; student trained on "
        f"'{bench.train_domain}' images, 'domain-shift' rows test on the other domain."
    )
    print(report["markdown"])
    out = Path(bench.out_dir)
    print(
        f"wrote {out / 'table.md'}, {out / 'table.json'}, {out / 'plot.png'} "
        f"and {len(results)} run files in {out / 'runs'} ({minutes:.1f} min)"
    )
    return 0


__all__ = ["DEMO_CONFIG", "FULL_CONFIG", "build_parser", "demo_bench", "main"]
