"""Where the errors sit: accuracy per question type, students beside their teachers.

World runs record ``by_type`` (run JSON: accuracy % per question type per test domain) and
``mad-distill zero-shot --json`` records the teachers' ``type/<qtype>`` (SNLI-VE also
``holds/<qtype>``: whether the hypothesis holds, the judgement ``class_groups`` distils). This
prints, per task, one Markdown table: a row per grid × method × fraction (mean over seeds, the
seed count in brackets) and a row per teacher, a column per question type. For SNLI-VE the
teachers' rows are their ``holds/*`` accuracies; the students' are 3-way, which equals their
holds accuracy wherever they make no entailment ↔ neutral errors (``snli_errors.py``).

Distilling runs also record ``vs_teacher`` (the teacher's zero-shot answers on the same test
items); ``--vs-teacher`` prints, per run, the student's and the teacher's accuracy, how often
they give the same answer, and the points only the teacher / only the student scores (overall
and per question type): how much of what the teacher knows the student took.

    python benchmarks/by_type.py                          # the committed diagnosis grids
    python benchmarks/by_type.py --domain textured benchmarks/results/<grid> ...
    python benchmarks/by_type.py --vs-teacher             # the committed vs_teacher grids
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
VS_TEACHER_GRIDS = (_ROOT / "world_vs_teacher", _ROOT / "world_vs_teacher_kl")
_TASK_NAMES = {"vqa": "VQA", "snli_ve": "SNLI-VE", "vcr": "VCR Q→A"}


def _runs(grids, field: str, domain: str):
    """``((task, grid, method, fraction), run JSON)`` of every run of ``grids`` that recorded
    ``field`` (others are skipped)."""
    grids = [Path(g) for g in grids]
    names = [g.name for g in grids]
    if len(set(names)) != len(names):
        # a grid read twice would count its seeds twice
        raise ValueError(f"two grids with the same name: {sorted(names)}")
    for grid in grids:
        runs = sorted((grid / "runs").glob("*.json"))
        if not runs:
            raise FileNotFoundError(f"no runs under {grid / 'runs'}")
        for path in runs:
            result = json.loads(path.read_text())
            if field not in result:
                continue
            if domain not in result[field]:
                raise KeyError(f"{path}: no test domain {domain!r} in {field}")
            run = result["run"]
            yield (run["task"], grid.name, run["method"], float(run["fraction"])), result


def collect(grids, domain: str) -> dict[tuple[str, str, str, float], list[dict[str, float]]]:
    """``{(task, grid, method, fraction): [{qtype: accuracy, "all": accuracy} per seed]}`` of
    the runs that recorded ``by_type`` (others are skipped)."""
    out: dict[tuple[str, str, str, float], list[dict[str, float]]] = {}
    for key, result in _runs(grids, "by_type", domain):
        row = {**result["by_type"][domain], "all": result["metrics"][domain]}
        out.setdefault(key, []).append(row)
    return out


_VS_COLUMNS = ("student", "teacher", "agreement", "teacher_only", "student_only")


def vs_teacher_tables(grids, domain: str) -> str:
    """Per task, a row per grid × method × fraction (mean over seeds) of its runs'
    ``vs_teacher``: the overall columns, then per question type "teacher only / student only"."""
    rows: dict[tuple[str, str, str, float], list[dict]] = {}
    for key, result in _runs(grids, "vs_teacher", domain):
        rows.setdefault(key, []).append(result["vs_teacher"][domain])
    lines = []
    for task in _TASK_NAMES:
        mine = {k: v for k, v in rows.items() if k[0] == task}
        if not mine:
            continue
        qtypes = sorted({q for seeds in mine.values() for s in seeds for q in s["by_type"]})
        level = " (holds)" if task == "snli_ve" else ""
        lines += [
            f"### {_TASK_NAMES[task]}, `{domain}` test items: student vs teacher{level}, %",
            "",
            "| who | fraction | student | teacher | same answer | teacher only | student only | "
            + " | ".join(f"{q}: teacher / student only" for q in qtypes)
            + " |",
            "|---|---|" + "---|" * (len(_VS_COLUMNS) + len(qtypes)),
        ]
        for (_, grid, method, fraction), seeds in sorted(mine.items(), key=lambda kv: kv[0][3]):
            cells = [f"{statistics.fmean(s[c] for s in seeds):.1f}" for c in _VS_COLUMNS]
            for q in qtypes:
                t, o = (
                    statistics.fmean(s["by_type"][q][c] for s in seeds)
                    for c in ("teacher_only", "student_only")
                )
                cells.append(f"{t:.1f} / {o:.1f}")
            who = f"{grid}/{method} (n={len(seeds)})"
            lines.append(f"| {who} | {fraction:.0%} | " + " | ".join(cells) + " |")
        lines.append("")
    if not lines:
        raise ValueError("no run recorded vs_teacher in the given grids")
    return "\n".join(lines)


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
    p.add_argument("grids", nargs="*")
    p.add_argument("--teachers", nargs="*", default=[str(t) for t in DEFAULT_TEACHERS])
    p.add_argument("--domain", default="flat")
    p.add_argument(
        "--vs-teacher", action="store_true", help="the student against its teacher (vs_teacher)"
    )
    args = p.parse_args(argv)
    if args.vs_teacher:
        print(vs_teacher_tables(args.grids or VS_TEACHER_GRIDS, args.domain))
    else:
        print(tables(args.grids or DEFAULT_GRIDS, args.teachers, args.domain))


if __name__ == "__main__":
    main()
