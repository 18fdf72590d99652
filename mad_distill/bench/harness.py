"""The low-shot / domain-shift benchmark harness (``mad-distill bench``).

A YAML file names a dataset runner, the tasks, training fractions, domains, seeds and methods
(each method a partial :class:`~mad_distill.config.MADConfig`, or ``null`` for the baseline).
The grid is expanded into runs; each run writes one JSON file atomically, so an interrupted bench
resumes by skipping the runs whose JSON exists with the same run config. Then the runs are
aggregated (mean ± std over seeds) into ``table.md``, ``table.json`` and ``plot.png``.

Example::

    dataset: world
    tasks: [vqa, snli_ve, vcr]
    fractions: [0.01, 0.05, 0.1, 1.0]
    train_domain: flat
    test_domains: [flat, textured]
    seeds: [0, 1, 2]
    methods:
      baseline: null
      mad: {select: {source: relevance, ratio: 0.3}, weight: {mode: gt_prob}}
    train: {max_epochs: 20, batch_size: 32}
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mad_distill._io import atomic_write_text

#: dataset name -> "module:function" of its runner; a runner trains and evaluates one run:
#: ``runner(run: RunSpec, bench: BenchConfig) -> dict`` returning at least
#: ``{"metrics": {test_domain: accuracy_in_percent}}``. Optional attributes of a runner:
#: ``resolve_train`` / ``resolve_method`` (what a run's fingerprint hashes, see
#: :func:`run_fingerprint`) and ``check_run(run, bench)`` (raises ``ValueError`` on a bad field;
#: :func:`run_bench` calls it on every run before it starts any).
RUNNERS: dict[str, str] = {
    "world": "mad_distill.bench.world:run_world",
}


def register_runner(name: str, target: str | Callable[..., dict]) -> None:
    """Plug a dataset runner into the harness (``"module:function"`` or a callable)."""
    RUNNERS[name] = target  # type: ignore[assignment]


@dataclass
class BenchConfig:
    """A benchmark grid. See the module docstring for the YAML form.

    Args:
        dataset: key of :data:`RUNNERS`.
        tasks: task names the runner knows.
        fractions: training-set fractions in (0, 1].
        train_domain: the domain the student is finetuned on.
        test_domains: domains every run is evaluated on (the train domain = in-domain,
            the others = domain shift).
        seeds: one run per seed; tables report mean ± std over seeds.
        methods: name -> partial MADConfig dict, or None for the plain-finetuning baseline.
        train: runner options (epochs, batch size, learning rate, ...).
        out_dir: where per-run JSON, tables and plots go.
    """

    dataset: str = "world"
    tasks: list[str] = field(default_factory=lambda: ["vqa", "snli_ve", "vcr"])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 1.0])
    train_domain: str = "flat"
    test_domains: list[str] = field(default_factory=lambda: ["flat", "textured"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: dict[str, dict[str, Any] | None] = field(
        default_factory=lambda: {"baseline": None, "mad": {}}
    )
    train: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "mad_distill_runs/bench"

    def __post_init__(self) -> None:
        if self.dataset not in RUNNERS:
            raise ValueError(f"dataset: unknown dataset {self.dataset!r}; known: {sorted(RUNNERS)}")
        for name in ("tasks", "fractions", "test_domains", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{name}: must be a non-empty list, got {value!r}")
        for f in self.fractions:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 < f <= 1):
                raise ValueError(f"fractions: each fraction must be in (0, 1], got {f!r}")
        if not isinstance(self.methods, dict) or not self.methods:
            raise ValueError("methods: must be a non-empty mapping name -> MAD config or null")
        for m, cfg in self.methods.items():
            if cfg is not None and not isinstance(cfg, dict):
                raise TypeError(f"methods.{m}: must be a mapping or null, got {type(cfg).__name__}")
        if not isinstance(self.train, dict):
            raise TypeError(f"train: must be a mapping, got {type(self.train).__name__}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> BenchConfig:
        """The bench YAML at ``path`` with ``overrides`` applied, each ``dotted.key=value``
        (the value read as YAML: ``train.accelerator=cuda``, ``seeds=[3,4]``,
        ``methods.MAD.kl.tau=1.5``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"bench config not found: {path}")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the bench config must be a YAML mapping")
        for item in overrides:
            _apply_override(data, item)
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(
                f"{path}: unknown field(s) {sorted(unknown)}; known: "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        return cls(**data)


def _apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``data[a][b][c] = value`` for ``item = "a.b.c=value"``; missing mappings are made,
    a ``null`` is not (``methods.baseline: null`` stays a baseline unless replaced whole)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(f"override {item!r}: expected dotted.key=value")
    node = data
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ValueError(f"override {item!r}: {where} is not a mapping")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: a task, a method, a training fraction and a seed."""

    task: str
    method: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.method}/frac{self.fraction:g}/seed{self.seed}"


def expand_grid(bench: BenchConfig) -> list[RunSpec]:
    """All runs of a bench, in a stable order (task, fraction, seed, method)."""
    return [
        RunSpec(task, method, float(fraction), int(seed))
        for task in bench.tasks
        for fraction in bench.fractions
        for seed in bench.seeds
        for method in bench.methods
    ]


def run_fingerprint(
    run: RunSpec,
    bench: BenchConfig,
    resolved_train: Mapping[str, Any] | None = None,
    resolve_method: Callable[[Any, str], Any] | None = None,
) -> str:
    """Hash of everything that determines a run's result; a stored run is reused only if equal.

    ``resolved_train``: the runner's options after defaults and the identities (checksums) of
    the files they name (a runner's ``resolve_train(bench.train)``), so a changed default or
    re-shipped weights are not mistaken for a finished run. ``resolve_method(method, task)``:
    the part of a method's config that applies to ``task`` (a runner's ``resolve_method``), so
    a setting for one task does not rerun the others.
    """
    method = bench.methods[run.method]
    if resolve_method is not None:
        method = resolve_method(method, run.task)
    payload = {
        "run": asdict(run),
        "dataset": bench.dataset,
        "method": method,
        "train_domain": bench.train_domain,
        "test_domains": list(bench.test_domains),
        "train": bench.train if resolved_train is None else dict(resolved_train),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so a crash never leaves a half-written file under the final name."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def _resolve_runner(name: str) -> Callable[..., dict]:
    target = RUNNERS[name]
    if callable(target):
        return target
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)


def _run_path(out_dir: Path, run: RunSpec) -> Path:
    return out_dir / "runs" / f"{run.key.replace('/', '__')}.json"


def load_finished(path: Path, fingerprint: str) -> dict | None:
    """A stored run result if it is complete and was made with the same fingerprint."""
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("fingerprint") == fingerprint else None


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_bench(
    bench: BenchConfig,
    runner: Callable[..., dict] | None = None,
    log: Callable[[str], None] = print,
    workers: int = 1,
    progress: bool = False,
) -> list[dict]:
    """Run (or resume) every run of ``bench``; returns all run results (in grid order).

    Args:
        runner: ``runner(run, bench) -> {"metrics": ...}`` (default: the dataset's).
        log: receives one line per run.
        workers: runs in parallel, each in its own process with one torch thread (spawned, so
            the runner must be importable by name). A run's result does not depend on it.
        progress: with ``workers > 1``, a progress bar over the runs (the workers' own
            per-step bars are not shown).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    out_dir = Path(bench.out_dir)
    runner = runner or _resolve_runner(bench.dataset)
    grid = expand_grid(bench)
    # the dataset's registered runner defines the fingerprint, also when a wrapper runs it
    registered = _resolve_runner(bench.dataset)
    resolve = getattr(registered, "resolve_train", None)
    resolved = resolve(bench.train) if resolve is not None else None
    resolve_method = getattr(registered, "resolve_method", None)
    results: list[dict | None] = [None] * len(grid)
    todo = []
    for i, run in enumerate(grid):
        fp = run_fingerprint(run, bench, resolved, resolve_method)
        done = load_finished(_run_path(out_dir, run), fp)
        if done is not None:
            log(f"[{i + 1}/{len(grid)}] {run.key}: done earlier, skipped")
            results[i] = done
        else:
            todo.append((i, run, fp))

    check = getattr(registered, "check_run", None)
    if check is not None:
        # every run's configuration first: a bad field must not wait for the runs before it
        for _, run, _ in todo:
            try:
                check(run, bench)
            except ValueError as err:
                raise ValueError(f"{run.key}: {err}") from None

    def finish(i: int, run: RunSpec, fp: str, out: dict, seconds: float) -> None:
        if "metrics" not in out or not isinstance(out["metrics"], dict):
            raise ValueError(f"runner for {bench.dataset!r} returned no 'metrics' mapping")
        result = {**out, "run": asdict(run), "key": run.key, "fingerprint": fp}
        result["seconds"] = round(seconds, 2)
        write_json_atomic(_run_path(out_dir, run), result)
        results[i] = result

    if workers == 1 or len(todo) <= 1:
        for i, run, fp in todo:
            log(f"[{i + 1}/{len(grid)}] {run.key}: running")
            finish(i, run, fp, *_timed(runner, run, bench))
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(1,),
        ) as pool:
            futures = {pool.submit(_timed, runner, run, bench): (i, run, fp) for i, run, fp in todo}
            log(f"{len(todo)} runs on {workers} worker processes")
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(todo), desc="runs", unit="run")
            for fut in cf.as_completed(futures):
                i, run, fp = futures[fut]
                out, seconds = fut.result()
                finish(i, run, fp, out, seconds)
                line = f"[{i + 1}/{len(grid)}] {run.key}: finished ({seconds:.0f} s)"
                if bar is None:
                    log(line)
                else:  # a line printed under a live bar would be torn by its redraws
                    bar.write(line)
                    bar.update(1)
            if bar is not None:
                bar.close()
    return [r for r in results if r is not None]


def _timed(runner: Callable[..., dict], run: RunSpec, bench: BenchConfig) -> tuple[dict, float]:
    start = time.perf_counter()
    out = runner(run, bench)
    return out, time.perf_counter() - start


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of a non-empty sequence:
    the mean ± std over seeds of every bench table."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(results: Sequence[dict], bench: BenchConfig) -> dict:
    """Mean ± std over seeds per task, method, fraction and test domain."""
    cells: dict[tuple[str, str, float, str], list[float]] = {}
    for r in results:
        run = r["run"]
        for domain, acc in r["metrics"].items():
            cells.setdefault((run["task"], run["method"], run["fraction"], domain), []).append(
                float(acc)
            )
    rows = []
    for (task, method, fraction, domain), values in sorted(cells.items()):
        mean, std = mean_std(values)
        rows.append(
            {
                "task": task,
                "method": method,
                "fraction": fraction,
                "test_domain": domain,
                "condition": "in-domain" if domain == bench.train_domain else "domain-shift",
                "mean": round(mean, 3),
                "std": round(std, 3),
                "n_seeds": len(values),
            }
        )
    return {"train_domain": bench.train_domain, "rows": rows}


def markdown_table(agg: dict, methods: Sequence[str]) -> str:
    """One row per task × condition × fraction, one column per method (mean ± std)."""
    by_cell: dict[tuple, dict[str, dict]] = {}
    for row in agg["rows"]:
        cell = (row["task"], row["condition"], row["test_domain"], row["fraction"])
        by_cell.setdefault(cell, {})[row["method"]] = row
    header = "| task | condition | test domain | train fraction | " + " | ".join(methods) + " |"
    sep = "|" + "---|" * (4 + len(methods))
    lines = [header, sep]
    for (task, condition, domain, fraction), per_method in by_cell.items():
        vals = []
        for m in methods:
            r = per_method.get(m)
            vals.append(f"{r['mean']:.1f} ± {r['std']:.1f}" if r else "–")
        lines.append(
            f"| {task} | {condition} | {domain} | {fraction * 100:g} % | " + " | ".join(vals) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(agg: dict, methods: Sequence[str], path: str | os.PathLike) -> None:
    """Accuracy vs training fraction (in-domain, one line per method) and domain-shift bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in agg["rows"]})
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 7), squeeze=False)
    for col, task in enumerate(tasks):
        ax = axes[0][col]
        for m in methods:
            pts = sorted(
                (r["fraction"], r["mean"], r["std"])
                for r in agg["rows"]
                if r["task"] == task and r["method"] == m and r["condition"] == "in-domain"
            )
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar([x * 100 for x in xs], ys, yerr=es, marker="o", capsize=3, label=m)
        ax.set_xscale("log")
        fractions = sorted({r["fraction"] for r in agg["rows"] if r["task"] == task})
        ax.set_xticks([f * 100 for f in fractions], [f"{f * 100:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("training data (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task}: in-domain ({agg['train_domain']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        shift = [r for r in agg["rows"] if r["task"] == task and r["condition"] == "domain-shift"]
        fractions = sorted({r["fraction"] for r in shift})
        width = 0.8 / max(len(methods), 1)
        for i, m in enumerate(methods):
            rows = {r["fraction"]: r for r in shift if r["method"] == m}
            xs = [j + i * width for j, f in enumerate(fractions) if f in rows]
            ax.bar(
                xs,
                [rows[f]["mean"] for f in fractions if f in rows],
                width,
                yerr=[rows[f]["std"] for f in fractions if f in rows],
                capsize=2,
                label=m,
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(fractions))])
        ax.set_xticklabels([f"{f * 100:g} %" for f in fractions])
        ax.set_xlabel("training data (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task}: domain shift")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: Sequence[dict], bench: BenchConfig) -> dict:
    """Aggregate, then write ``table.md``, ``table.json`` and ``plot.png`` under ``out_dir``."""
    out_dir = Path(bench.out_dir)
    agg = aggregate(results, bench)
    methods = list(bench.methods)
    md = markdown_table(agg, methods)
    atomic_write_text(out_dir / "table.md", md)
    write_json_atomic(out_dir / "table.json", agg)
    plot(agg, methods, out_dir / "plot.png")
    return {"aggregate": agg, "markdown": md}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mad-distill bench", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="bench YAML file")
    parser.add_argument("--out-dir", help="override the config's out_dir")
    parser.add_argument(
        "--workers", type=int, default=1, help="runs in parallel (one process and thread each)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, dotted, the value read as YAML (repeatable): "
        "--set train.accelerator=cuda --set seeds=[3,4]",
    )
    args = parser.parse_args(argv)
    bench = BenchConfig.from_yaml(args.config, args.set)
    if args.out_dir:
        bench.out_dir = args.out_dir
    results = run_bench(bench, workers=args.workers)
    report = write_report(results, bench)
    print(report["markdown"])
    print(f"wrote {Path(bench.out_dir) / 'table.md'}, table.json and plot.png")
    return 0
