"""Where the errors sit: accuracy per question type, students beside their teachers.

World runs record ``by_type`` (run JSON: accuracy % per question type per test domain) and
``mad-distill zero-shot --json`` records the teachers' ``type/<qtype>`` (SNLI-VE also
``holds/<qtype>``: whether the hypothesis holds, the judgement ``class_groups`` distils). This
prints, per task, one Markdown table: a row per grid × method × fraction (mean over seeds, the
seed count in brackets) and a row per teacher, a column per question type. For SNLI-VE the
teachers' rows are their ``holds/*`` accuracies; the students' are 3-way, which equals their
holds accuracy wherever they make no entailment ↔ neutral errors (``snli_errors.py``).

    python benchmarks/by_type.py                          # the committed diagnosis grids
    python benchmarks/by_type.py --domain textured benchmarks/results/<grid> ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

_ROOT = Path(__file__).resolve().parent / "results"
DEFAULT_GRIDS = (
    _ROOT / "world_types",
    _ROOT / "world_probe_kl_tau125_seeds",
    _ROOT / "world_types_100pct",
)
DEFAULT_TEACHERS = (
    _ROOT / "teacher_zero_shot" / "world_clip.json",
    _ROOT / "teacher_zero_shot" / "world_clip_6000.json",
)
_TASK_NAMES = {"vqa": "VQA", "snli_ve": "SNLI-VE", "vcr": "VCR Q→A"}


def collect(grids, domain: str) -> dict[tuple[str, str, str, float], list[dict[str, float]]]:
    """``{(task, grid, method, fraction): [{qtype: accuracy, "all": accuracy} per seed]}`` of
    the runs that recorded ``by_type`` (others are skipped)."""
    grids = [Path(g) for g in grids]
    names = [g.name for g in grids]
    if len(set(names)) != len(names):
        # a grid read twice would count its seeds twice
        raise ValueError(f"two grids with the same name: {sorted(names)}")
    out: dict[tuple[str, str, str, float], list[dict[str, float]]] = {}
    for grid in grids:
        runs = sorted((grid / "runs").glob("*.json"))
        if not runs:
            raise FileNotFoundError(f"no runs under {grid / 'runs'}")
        for path in runs:
            result = json.loads(path.read_text())
            if "by_type" not in result:
                continue
            if domain not in result["by_type"]:
                raise KeyError(f"{path}: no test domain {domain!r} in by_type")
            run = result["run"]
            key = (run["task"], grid.name, run["method"], float(run["fraction"]))
            row = {**result["by_type"][domain], "all": result["metrics"][domain]}
            out.setdefault(key, []).append(row)
    return out


def teacher_rows(paths, domain: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {teacher: {qtype: accuracy, "all": accuracy}}}`` from ``zero-shot --json``
    files; SNLI-VE rows are the ``holds/*`` accuracies."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no teacher zero-shot file {path}")
        for task, by_domain in json.loads(path.read_text()).items():
            got = by_domain[domain]
            prefix, overall = ("holds/", "holds") if task == "snli_ve" else ("type/", "accuracy")
            row = {k[len(prefix) :]: v for k, v in got.items() if k.startswith(prefix)}
            if task == "snli_ve" and not row:
                # files written before holds/<qtype> existed
                raise KeyError(
                    f"{path}: no holds/<qtype> for snli_ve (rerun `mad-distill zero-shot`)"
                )
            out.setdefault(task, {})[path.stem] = {**row, "all": got[overall]}
    return out


def tables(grids, teachers, domain: str) -> str:
    students = collect(grids, domain)
    teacher = teacher_rows(teachers, domain)
    lines = []
    for task in _TASK_NAMES:
        rows = {k: v for k, v in students.items() if k[0] == task}
        if not rows:
            continue
        qtypes = sorted({q for seeds in rows.values() for s in seeds for q in s} - {"all"})
        what = "holds (teachers) / 3-way (students)" if task == "snli_ve" else "accuracy"
        lines += [
            f"### {_TASK_NAMES[task]}, `{domain}` test items, {what} % per question type",
            "",
            "| who | fraction | " + " | ".join(qtypes) + " | all |",
            "|---|---|" + "---|" * (len(qtypes) + 1),
        ]
        for (_, grid, method, fraction), seeds in sorted(rows.items(), key=lambda kv: kv[0][3]):
            cells = [statistics.fmean(s[q] for s in seeds) for q in [*qtypes, "all"]]
            who = f"{grid}/{method} (n={len(seeds)})"
            lines.append(
                f"| {who} | {fraction:.0%} | " + " | ".join(f"{c:.1f}" for c in cells) + " |"
            )
        for name, row in teacher.get(task, {}).items():
            cells = [f"{row[q]:.1f}" if q in row else "–" for q in [*qtypes, "all"]]
            lines.append(f"| teacher {name} (zero-shot) | – | " + " | ".join(cells) + " |")
        lines.append("")
    if not lines:
        raise ValueError("no run recorded by_type in the given grids")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("grids", nargs="*", default=[str(g) for g in DEFAULT_GRIDS])
    p.add_argument("--teachers", nargs="*", default=[str(t) for t in DEFAULT_TEACHERS])
    p.add_argument("--domain", default="flat")
    args = p.parse_args(argv)
    print(tables(args.grids, args.teachers, args.domain))


if __name__ == "__main__":
    main()
