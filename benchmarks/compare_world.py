"""The README's world tables: distilling methods against the best of several baselines.

Default: the unlabelled-inputs table. Reads the ``table.json`` of the low-shot grid (the baseline
with the default steps) and of the unlabelled grid (every method at 600 steps) and prints one
Markdown row per task x fraction x test domain, with ``method − better baseline`` for ``--method``.

``--status``: the issue's target, cell by cell. Every low-shot cell compares MAD-U, MAD-U with
AugMix on both rows (``world_augment_seeds``) and the same distilling the 6000-step teacher
(``world_teacher6000``, if present) with the best of three baselines (default steps,
600 steps, AugMix on the labelled rows), marks the cells that clear +5 points, and shows the
fully supervised student (``world_100pct_seeds``, else seed 0 of ``world_100pct``) for scale; the
100 % rows compare MAD with the baseline against the issue's "baseline − 1".

``--best [GRID ...]``: the best measured setting per low-shot cell over many grids (default:
every ``results/world*/table.json``): the distilling method with the highest mean over at least
3 seeds, against the highest mean of any grid's ``baseline*`` method over at least 3 seeds (a
single seed is not compared with a mean; a baseline with fewer seeds above that bar is shown
beside it). A maximum over many settings: it says which setting reaches a cell, not that one
setting reaches them all.

``--probe GRID``: each distilling method of a probe grid (its cells only) against the best of
the status baselines and the grid's own ``baseline*`` methods (e.g. a baseline trained for as
many steps as the probe's methods), with the same +5 / 3-seed rule.

    python benchmarks/compare_world.py            # defaults: the committed results
    python benchmarks/compare_world.py --status
    python benchmarks/compare_world.py --probe benchmarks/results/world_probe_kl/table.json
    python benchmarks/compare_world.py --best
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_ROOT = Path(__file__).resolve().parent / "results"
_NAMES = {"vqa": "VQA", "snli_ve": "SNLI-VE", "vcr": "VCR Q→A"}
#: the issue's bars: low-shot gain over the baseline, and the allowed loss at 100 %
LOWSHOT_GAIN, FULL_LOSS = 5.0, -1.0
#: the column of the grid that distils the 6000-step teacher
STRONGER = "MAD-U + AugMix, 6000-step teacher"
#: shown where a cell has no baseline to read a method against (it is then not counted)
_NO_REF = "no baseline"

Cells = dict[tuple[str, float, str, str], tuple[float, float, int]]


def _cells(path: Path) -> Cells:
    """``{(task, fraction, test domain, method): (mean, std, seeds)}`` of a ``table.json``."""
    rows = json.loads(Path(path).read_text())["rows"]
    return {
        (r["task"], r["fraction"], r["test_domain"], r["method"]): (
            r["mean"],
            r["std"],
            r.get("n_seeds", 1),
        )
        for r in rows
    }


def _order(keys) -> list[tuple[str, float, str]]:
    return sorted(keys, key=lambda k: (list(_NAMES).index(k[0]), k[1], k[2]))


def _fmt(cell: tuple[float, float, int] | None) -> str:
    if cell is None:
        return "–"
    mean, std, n = cell
    return f"{mean:.1f} ± {std:.1f}" + ("" if n >= 3 else f" (n={n})")


def compare(short: Cells, grid: Cells, methods: list[str], method: str) -> list[str]:
    """The unlabelled-inputs table (Markdown lines)."""
    head = ["task", "fraction", "test domain", "baseline (default steps)", "baseline (600 steps)"]
    head += [f"{m} (600 steps)" if m != method else m for m in methods]
    head.append(f"{method} − best baseline")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, frac, dom in _order({k[:3] for k in grid}):
        b1, b2 = short[(task, frac, dom, "baseline")], grid[(task, frac, dom, "baseline")]
        cells = [_NAMES[task], f"{frac * 100:g} %", dom]
        cells += [f"{m:.1f} ± {s:.1f}" for m, s, _ in (b1, b2)]
        cells += [
            f"{grid[(task, frac, dom, m)][0]:.1f} ± {grid[(task, frac, dom, m)][1]:.1f}"
            for m in methods
        ]
        delta = grid[(task, frac, dom, method)][0] - max(b1[0], b2[0])
        cells.append(f"**{delta:+.1f}**")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def status_baselines(short: Cells, grid: Cells, augmented: Cells) -> list[tuple[str, Cells, str]]:
    """The three baselines of the target table as ``(name, cells, method)``."""
    return [
        ("default steps", short, "baseline"),
        ("600 steps", grid, "baseline"),
        ("AugMix", augmented, "baseline-augmix"),
    ]


def _tally(
    met: dict,
    name: str,
    out: tuple[float, float, int],
    ref: tuple[float, float, int],
    bar: float = LOWSHOT_GAIN,
) -> str:
    """Count a cell of ``name`` in ``met`` (met when ``out``'s mean is at least ``bar`` above
    ``ref``'s, on at least 3 seeds each) and return the difference as Markdown."""
    delta = out[0] - ref[0]
    ok = delta >= bar and min(out[2], ref[2]) >= 3
    met[name][0] += ok
    met[name][1] += 1
    return f"**{delta:+.1f}**" + (" ✓" if ok else "")


def status(
    short: Cells, grid: Cells, augmented: Cells, full: Cells, stronger: Cells | None = None
) -> tuple[list[str], dict]:
    """The target table (Markdown lines) and ``{method: [cells met, cells]}``.

    ``stronger``: the grid of MAD-U + AugMix distilling the 6000-step teacher
    (``world_teacher6000``); one more method column when given.

    A low-shot cell is met when the method's mean is at least :data:`LOWSHOT_GAIN` above the
    best baseline's; a 100 % cell when MAD's mean is at least ``baseline + FULL_LOSS``. A mean
    over fewer than 3 seeds is shown with its ``n`` and never counts as met.
    """
    baselines = status_baselines(short, grid, augmented)
    methods = [("MAD-U", grid, "MAD-U"), ("MAD-U + AugMix", augmented, "MAD-U-augmix-all")]
    if stronger:
        methods.append((STRONGER, stronger, "MAD-U-augmix-all"))
    head = ["task", "fraction", "test domain"]
    head += [f"baseline ({name})" for name, _, _ in baselines]
    head += [name for name, _, _ in methods]
    head += [f"{name} − best baseline" for name, _, _ in methods]
    head.append("100 % baseline")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    met = {name: [0, 0] for name, _, _ in methods}
    low = {k[:3] for k in grid} | {k[:3] for k in augmented}
    for task, frac, dom in _order(low):
        base = [table.get((task, frac, dom, m)) for _, table, m in baselines]
        best = max((b for b in base if b is not None), key=lambda b: b[0], default=None)
        cells = [_NAMES[task], f"{frac * 100:g} %", dom] + [_fmt(b) for b in base]
        outs = [table.get((task, frac, dom, m)) for _, table, m in methods]
        cells += [_fmt(o) for o in outs]
        for (name, _, _), out in zip(methods, outs):
            # a cell no baseline ran in cannot be judged: shown, never counted
            if out is None or best is None:
                cells.append("–" if out is None else _NO_REF)
            else:
                cells.append(_tally(met, name, out, best))
        cells.append(_fmt(full.get((task, 1.0, dom, "baseline"))))
        lines.append("| " + " | ".join(cells) + " |")
    full_rows = _order({k[:3] for k in full if (k[:3] + ("MAD",)) in full})
    if full_rows:
        lines += ["", "| task | fraction | test domain | baseline | MAD | MAD − baseline |"]
        lines.append("|" + "---|" * 6)
        met["MAD at 100 %"] = [0, 0]
        for task, frac, dom in full_rows:
            b, m = full[(task, frac, dom, "baseline")], full[(task, frac, dom, "MAD")]
            gain = _tally(met, "MAD at 100 %", m, b, FULL_LOSS)
            lines.append(
                f"| {_NAMES[task]} | {frac * 100:g} % | {dom} | {_fmt(b)} | {_fmt(m)} | {gain} |"
            )
    return lines, met


def probe(probe_grid: Cells, baselines: list[tuple[str, Cells, str]]) -> tuple[list[str], dict]:
    """A probe grid's methods against the best baseline per cell (Markdown lines and
    ``{method: [cells met, cells]}``). ``baselines``: ``(name, cells, method)`` read besides the
    probe's own methods named ``baseline*``."""
    own = sorted({k[3] for k in probe_grid if k[3].startswith("baseline")})
    methods = sorted({k[3] for k in probe_grid} - set(own))
    sources = baselines + [(f"{m} (this grid)", probe_grid, m) for m in own]
    head = ["task", "fraction", "test domain", "best baseline", "which"] + methods
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    met = {m: [0, 0] for m in methods}
    for task, frac, dom in _order({k[:3] for k in probe_grid}):
        base = [
            (name, table[(task, frac, dom, m)])
            for name, table, m in sources
            if (task, frac, dom, m) in table
        ]
        which, best = max(base, key=lambda nb: nb[1][0], default=(_NO_REF, None))
        cells = [_NAMES[task], f"{frac * 100:g} %", dom, _fmt(best), which]
        for m in methods:
            out = probe_grid.get((task, frac, dom, m))
            if out is None or best is None:
                cells.append(_fmt(out))
            else:
                cells.append(f"{_fmt(out)} ({_tally(met, m, out, best)})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines, met


def best(grids: dict[str, Cells]) -> tuple[list[str], dict]:
    """The best setting per low-shot cell over ``grids`` (name -> cells; see the module doc):
    Markdown lines and ``{"best setting per cell": [cells met, cells]}``."""
    refs: dict[tuple[str, float, str], list[tuple[str, tuple[float, float, int]]]] = {}
    outs: dict[tuple[str, float, str], list[tuple[str, tuple[float, float, int]]]] = {}
    for name, cells in grids.items():
        for (task, frac, dom, method), cell in cells.items():
            if frac >= 1:
                continue
            into = refs if method.startswith("baseline") else outs
            into.setdefault((task, frac, dom), []).append((f"{name}/{method}", cell))
    head = ["task", "fraction", "test domain", "best baseline (>= 3 seeds)", "which"]
    head += ["best setting (>= 3 seeds)", "which", "− best baseline", "higher baseline, < 3 seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    key = "best setting per cell"
    met = {key: [0, 0]}

    def top(found, seeds):
        picks = [nc for nc in found if nc[1][2] >= seeds]
        return max(picks, key=lambda nc: nc[1][0], default=("–", None))

    for cell in _order(outs):
        ref_name, ref = top(refs.get(cell, []), 3)
        out_name, out = top(outs[cell], 3)
        row = [_NAMES[cell[0]], f"{cell[1] * 100:g} %", cell[2], _fmt(ref), ref_name]
        row += [_fmt(out), out_name]
        if ref is None or out is None:
            row.append(_NO_REF if ref is None else "–")
        else:
            row.append(_tally(met, key, out, ref))
        few_name, few = top(refs.get(cell, []), 1)
        higher = few is not None and few[2] < 3 and (ref is None or few[0] > ref[0])
        row.append(f"{_fmt(few)}: {few_name}" if higher else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines, met


def _print_table(lines: list[str], met: dict) -> None:
    print("\n".join(lines))
    print()
    for name, (ok, n) in met.items():
        print(f"- {name}: {ok} of {n} cells meet the target (mean of >= 3 seeds)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--default-steps", type=Path, default=_ROOT / "world" / "table.json")
    p.add_argument("--grid", type=Path, default=_ROOT / "world_unlabeled" / "table.json")
    p.add_argument("--methods", nargs="+", default=["MAD", "MAD-U"])
    p.add_argument("--method", default="MAD-U", help="the method compared with the baselines")
    p.add_argument("--status", action="store_true", help="the target table (see above)")
    p.add_argument("--augmented", type=Path, default=_ROOT / "world_augment_seeds" / "table.json")
    p.add_argument(
        "--full",
        type=Path,
        nargs="+",
        default=[
            _ROOT / "world_100pct_seeds" / "table.json",
            _ROOT / "world_100pct" / "table.json",
        ],
        help="100 %% grids; a cell is read from the first that has it",
    )
    p.add_argument(
        "--stronger",
        type=Path,
        default=_ROOT / "world_teacher6000" / "table.json",
        help="the grid with the 6000-step teacher (a column if the file exists)",
    )
    p.add_argument("--probe", type=Path, help="a probe grid's table.json (see above)")
    p.add_argument(
        "--best",
        type=Path,
        nargs="*",
        help="the best setting per cell over these grids' table.json (none named: every "
        "results/world*/table.json)",
    )
    args = p.parse_args(argv)
    if args.best is not None:
        paths = args.best or sorted(_ROOT.glob("world*/table.json"))
        grids: dict[str, Cells] = {}
        for path in paths:
            # a grid is named by its folder (results/<grid>/table.json), another file by its stem
            name = path.parent.name if path.name == "table.json" else path.stem
            if name in grids:
                p.error(f"--best: two grids named {name!r}; rename one file")
            grids[name] = _cells(path)
        _print_table(*best(grids))
        return 0
    short, grid = _cells(args.default_steps), _cells(args.grid)
    if args.probe is not None:
        baselines = status_baselines(short, grid, _cells(args.augmented))
        _print_table(*probe(_cells(args.probe), baselines))
        return 0
    if not args.status:
        print("\n".join(compare(short, grid, args.methods, args.method)))
        return 0
    full: Cells = {}
    for path in reversed(args.full):
        full.update(_cells(path))
    stronger = _cells(args.stronger) if args.stronger.is_file() else None
    _print_table(*status(short, grid, _cells(args.augmented), full, stronger))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
