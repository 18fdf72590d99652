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
every ``results/world*/table.json`` but the fresh-seed grids of ``--fresh``): the distilling
method with the highest mean over at least 3 seeds, against the highest mean of any grid's
``baseline*`` method over at least 3 seeds (a single seed is not compared with a mean; a
baseline with fewer seeds above that bar is shown beside it). A maximum over many settings: it
says which setting reaches a cell, not that one setting reaches them all. The 100 % cells follow
in a table of their own, against the issue's "baseline − 1".

``--fresh``: the settings ``--best`` picked, on fresh seeds. A best of many settings on seeds 0-2
flatters itself; the ``world_seeds_*`` grids (:data:`FRESH`) rerun the picked settings and every
baseline on seeds 3 and 4, each method with the same settings as in the grid it comes from
(checked: :func:`~mad_distill.bench.world.run_settings` of both are equal, else an error). Per
cell: each setting on seeds 0-2, on 3-4 and on all five; the baseline and the distilling
setting picked on seeds 0-2 and their margin on each; and the best of each over all five seeds.

``--summary``: the issue's verdict, one row per cell: on all five seeds where ``--fresh`` reran
every setting of the cell, else on seeds 0-2 as ``--best`` (whose margin is shown beside it).

``--probe GRID``: each distilling method of a probe grid (its cells only) against the best of
the status baselines and the grid's own ``baseline*`` methods (e.g. a baseline trained for as
many steps as the probe's methods), with the same +5 / 3-seed rule.

    python benchmarks/compare_world.py            # defaults: the committed results
    python benchmarks/compare_world.py --status
    python benchmarks/compare_world.py --status --full-method MAD-tap0 \
        --full benchmarks/results/world_100pct_tap0/table.json \
        benchmarks/results/world_100pct_seeds/table.json
    python benchmarks/compare_world.py --probe benchmarks/results/world_probe_kl/table.json
    python benchmarks/compare_world.py --best
    python benchmarks/compare_world.py --fresh
    python benchmarks/compare_world.py --summary
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_BENCH = Path(__file__).resolve().parent
_ROOT = _BENCH / "results"
#: the dropout-0 baselines (session 21), rerun on fresh seeds in every cell that ``--fresh`` reads
_NODROP = {
    m: "world_probe_nodrop_baselines"
    for m in (
        "baseline-nodrop",
        "baseline-nodrop-150",
        "baseline-augmix-nodrop",
        "baseline-randaugment-nodrop",
        "baseline-trivialaugment-nodrop",
    )
}
#: the fresh-seed grids (``benchmarks/<name>.yaml``) -> {method: the grid it comes from}
FRESH: dict[str, dict[str, str]] = {
    "world_seeds_vqa1": {
        "baseline-augmix": "world_augment_seeds",
        "baseline-randaugment": "world_policy_baselines",
        "baseline-trivialaugment": "world_policy_baselines",
        "KL-augmix": "world_probe_kl",
        "MAD-U-tap0-randaugment": "world_policy_mad_rand_vqa",
    },
    "world_seeds_vqa5": {
        "baseline-augmix": "world_augment_seeds",
        "baseline-randaugment": "world_policy_baselines",
        "baseline-trivialaugment": "world_policy_baselines",
        "KL-pool-auglab-tau1.25": "world_probe_kl_tau125_seeds",
    },
    "world_seeds_snli": {
        "baseline": "world_lowshot",
        "baseline-augmix": "world_augment_seeds",
        "baseline-randaugment": "world_policy_baselines",
        "baseline-trivialaugment": "world_policy_baselines",
        "MAD-U-augmix-all": "world_augment_seeds",
        "MAD-U-tap0-trivialaugment": "world_policy_mad",
    },
    "world_seeds_snli_rand": {
        "baseline-randaugment": "world_policy_baselines",
        "MAD-U-tap0-randaugment": "world_policy_mad_rand",
    },
    "world_seeds_deep": {
        "baseline-trivialaugment": "world_probe_deep",
        "baseline-augmix": "world_probe_deep",
        "baseline-trivialaugment-1260": "world_probe_deep",
        "MAD-U-tap0-trivialaugment": "world_probe_deep",
    },
    "world_seeds_vcr1": {
        "baseline": "world_lowshot",
        "baseline-augmix": "world_augment_seeds",
        "baseline-randaugment": "world_policy_baselines",
        "baseline-trivialaugment": "world_policy_baselines",
        "MAD-U-tap0-augmix": "world_probe_tap_grid_seeds",
    },
    "world_seeds_kl_nodrop": {"KL-augmix-nodrop": "world_probe_kl_nodrop"},
    "world_seeds_nodrop": _NODROP,
    "world_seeds_nodrop_vcr1": _NODROP,
}
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
    short: Cells,
    grid: Cells,
    augmented: Cells,
    full: Cells,
    stronger: Cells | None = None,
    full_method: str = "MAD",
) -> tuple[list[str], dict]:
    """The target table (Markdown lines) and ``{method: [cells met, cells]}``.

    ``stronger``: the grid of MAD-U + AugMix distilling the 6000-step teacher
    (``world_teacher6000``); one more method column when given. ``full_method``: the method
    of the 100 % grids read against their ``baseline``.

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
    full_rows = _order({k[:3] for k in full if (k[:3] + (full_method,)) in full})
    if full_rows:
        name = f"{full_method} at 100 %"
        lines += [
            "",
            f"| task | fraction | test domain | baseline | {full_method} "
            f"| {full_method} − baseline |",
        ]
        lines.append("|" + "---|" * 6)
        met[name] = [0, 0]
        for task, frac, dom in full_rows:
            b, m = full[(task, frac, dom, "baseline")], full[(task, frac, dom, full_method)]
            gain = _tally(met, name, m, b, FULL_LOSS)
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


Found = dict[tuple[str, float, str], list[tuple[str, tuple[float, float, int]]]]


def _settings(grids: dict[str, Cells]) -> tuple[Found, Found]:
    """Per cell, every ``grid/method`` with its stats: the baselines and the distilling ones."""
    refs: Found = {}
    outs: Found = {}
    for name, cells in grids.items():
        for (task, frac, dom, method), cell in cells.items():
            into = refs if method.startswith("baseline") else outs
            into.setdefault((task, frac, dom), []).append((f"{name}/{method}", cell))
    return refs, outs


def _top(found: list, seeds: int) -> tuple[str, tuple[float, float, int] | None]:
    """The setting with the highest mean over at least ``seeds`` seeds, or ``("–", None)``."""
    picks = [nc for nc in found if nc[1][2] >= seeds]
    return max(picks, key=lambda nc: nc[1][0], default=("–", None))


def best(grids: dict[str, Cells]) -> tuple[list[str], dict]:
    """The best setting per cell over ``grids`` (name -> cells; see the module doc): Markdown
    lines (the low-shot table, then the 100 % table) and ``{name: [cells met, cells]}``.

    A low-shot cell is met at :data:`LOWSHOT_GAIN` above the best baseline, a 100 % cell at
    :data:`FULL_LOSS` (the issue's "not worse than baseline − 1")."""
    refs, outs = _settings(grids)
    lines: list[str] = []
    met: dict[str, list[int]] = {}
    for key, bar, full in (
        ("best setting per cell", LOWSHOT_GAIN, False),
        ("best setting at 100 %", FULL_LOSS, True),
    ):
        cells = [c for c in _order(outs) if (c[1] >= 1) == full]
        if not cells:
            continue
        lines += _best_rows(cells, refs, outs, met, key, bar, blank=bool(lines))
    return lines, met


def _best_rows(cells, refs, outs, met: dict, key: str, bar: float, blank: bool) -> list[str]:
    """One table of :func:`best`: its Markdown lines; counts its cells in ``met[key]``."""
    head = ["task", "fraction", "test domain", "best baseline (>= 3 seeds)", "which"]
    head += ["best setting (>= 3 seeds)", "which", "− best baseline", "higher baseline, < 3 seeds"]
    lines = [""] if blank else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    met[key] = [0, 0]
    for cell in cells:
        ref_name, ref = _top(refs.get(cell, []), 3)
        out_name, out = _top(outs[cell], 3)
        row = [_NAMES[cell[0]], f"{cell[1] * 100:g} %", cell[2], _fmt(ref), ref_name]
        row += [_fmt(out), out_name]
        if ref is None or out is None:
            row.append(_NO_REF if ref is None else "–")
        else:
            row.append(_tally(met, key, out, ref, bar))
        few_name, few = _top(refs.get(cell, []), 1)
        higher = few is not None and few[2] < 3 and (ref is None or few[0] > ref[0])
        row.append(f"{_fmt(few)}: {few_name}" if higher else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


Seeds = dict[int, float]


def _seed_values(bench, task: str, method: str, frac: float, domain: str) -> Seeds:
    """``{seed: accuracy}`` of the finished runs of one method of a grid, on one test domain."""
    from mad_distill.bench.harness import RunSpec, _run_path

    out = {}
    for seed in bench.seeds:
        path = _run_path(_BENCH.parent / bench.out_dir, RunSpec(task, method, frac, seed))
        if path.is_file():
            out[int(seed)] = json.loads(path.read_text())["metrics"][domain]
    return out


def _stats(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample std and count, as the harness' tables."""
    from mad_distill.bench.harness import mean_std

    return (*mean_std(values), len(values))


Fresh = dict[tuple[str, float, str], dict[str, tuple[bool, Seeds, Seeds]]]


def _fresh_cells(fresh: dict[str, dict[str, str]] | None, bench_dir: Path) -> Fresh:
    """Per cell, every setting the fresh grids rerun: ``{grid/method: (is baseline, {seed:
    accuracy} on seeds 0-2, {seed: accuracy} on the fresh seeds)}``. Raises if a fresh grid's
    method is not its source's setting, or a seed repeats."""
    from mad_distill.bench.harness import BenchConfig, RunSpec
    from mad_distill.bench.world import run_settings

    fresh = FRESH if fresh is None else fresh
    cells: Fresh = {}
    for grid, sources in fresh.items():
        new = BenchConfig.from_yaml(bench_dir / f"{grid}.yaml")
        for method, source in sources.items():
            old = BenchConfig.from_yaml(bench_dir / f"{source}.yaml")
            for task in new.tasks:
                for frac in new.fractions:
                    a = run_settings(RunSpec(task, method, frac, 0), new)
                    b = run_settings(RunSpec(task, method, frac, 0), old)
                    if a != b:
                        diff = sorted(k for k in a if a[k] != b[k])
                        raise ValueError(
                            f"{grid}/{method} is not {source}/{method} ({task}, {frac:g}): "
                            f"{diff} differ"
                        )
                    for dom in new.test_domains:
                        name = f"{source}/{method}"
                        theirs = _seed_values(old, task, method, frac, dom)
                        _, _, ours = cells.setdefault((task, frac, dom), {}).setdefault(
                            name, (method.startswith("baseline"), theirs, {})
                        )
                        for seed, value in _seed_values(new, task, method, frac, dom).items():
                            if seed in theirs:
                                raise ValueError(f"{grid}/{method}: seed {seed} also in {source}")
                            if seed in ours and ours[seed] != value:
                                # the same setting and seed in two fresh grids: a rerun, so equal
                                raise ValueError(
                                    f"{name} seed {seed} ({task}, {frac:g}, {dom}) differs "
                                    f"between two fresh grids: {ours[seed]} vs {value}"
                                )
                            ours[seed] = value
    return cells


def _top_fresh(
    found: dict[str, tuple[bool, Seeds, Seeds]], baseline: bool, seeds: str
) -> tuple[str, dict] | None:
    """The baseline / distilling setting of a fresh cell with the highest mean on ``seeds``
    (``old``: 0-2, ``fresh``, ``all``) and its stats on each; settings with < 3 old seeds
    are left out."""
    best = None
    for name, (is_base, old, new) in found.items():
        if is_base != baseline or len(old) < 3:
            continue
        vals = {"old": list(old.values()), "fresh": list(new.values())}
        vals["all"] = vals["old"] + vals["fresh"]
        stats = {k: _stats(v) if v else None for k, v in vals.items()}
        if stats[seeds] is not None and (best is None or stats[seeds] > best[1][seeds]):
            best = (name, stats)
    return best


def _complete(found: dict[str, tuple[bool, Seeds, Seeds]]) -> bool:
    """Whether every setting of a fresh cell has all five seeds (read on all seeds only then)."""
    counts = {len(old) + len(new) for _, old, new in found.values()}
    return len(counts) == 1 and min(counts) >= 5


def fresh_seeds(
    fresh: dict[str, dict[str, str]] | None = None, bench_dir: Path = _BENCH
) -> tuple[list[str], dict]:
    """The ``--fresh`` tables (Markdown lines) and ``{"all seeds": [met, complete cells]}``."""
    cells = _fresh_cells(fresh, bench_dir)
    head = ["task", "fraction", "test domain", "setting", "seeds 0-2", "fresh seeds", "all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in _order(cells):
        for name, (_, old, new) in cells[cell].items():
            row = [_NAMES[cell[0]], f"{cell[1] * 100:g} %", cell[2], name]
            row += [_fmt(_stats(list(v.values()))) if v else "–" for v in (old, new)]
            row.append(_fmt(_stats([*old.values(), *new.values()])) if old or new else "–")
            lines.append("| " + " | ".join(row) + " |")
    head = ["task", "fraction", "test domain", "best on seeds 0-2: baseline / distilling"]
    head += ["− baseline, seeds 0-2", "− baseline, fresh seeds"]
    head += ["best on all seeds: baseline / distilling", "− baseline, all seeds"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    key = "all seeds"
    met = {key: [0, 0]}
    for cell in _order(cells):
        found = cells[cell]
        base, dist = _top_fresh(found, True, "old"), _top_fresh(found, False, "old")
        if base is None or dist is None:
            continue
        row = [_NAMES[cell[0]], f"{cell[1] * 100:g} %", cell[2], f"{base[0]} / {dist[0]}"]
        row.append(f"{dist[1]['old'][0] - base[1]['old'][0]:+.1f}")
        fb, fd = base[1]["fresh"], dist[1]["fresh"]
        row.append("–" if fb is None or fd is None else f"{fd[0] - fb[0]:+.1f} (n={fd[2]})")
        if not _complete(found):
            row += ["– (fresh seeds missing)", "–"]
        else:
            base5, dist5 = _top_fresh(found, True, "all"), _top_fresh(found, False, "all")
            row.append(f"{_fmt(base5[1]['all'])} {base5[0]} / {_fmt(dist5[1]['all'])} {dist5[0]}")
            row.append(_tally(met, key, dist5[1]["all"], base5[1]["all"]))
        lines.append("| " + " | ".join(row) + " |")
    return lines, met


def summary(
    grids: dict[str, Cells],
    fresh: dict[str, dict[str, str]] | None = None,
    bench_dir: Path = _BENCH,
) -> tuple[list[str], dict]:
    """The ``--summary`` table: one row per cell, the issue's verdict on the widest reading.

    A low-shot cell whose settings were all rerun on fresh seeds (``--fresh``, complete) is read
    on all five seeds (best five-seed baseline against the best five-seed distilling setting);
    any other cell, and every 100 % cell, on seeds 0-2 as ``--best`` reads it. The ``--best``
    margin is shown for every low-shot cell beside it, so a five-seed verdict never hides a
    three-seed setting that was not rerun."""
    found = _fresh_cells(fresh, bench_dir)
    refs, outs = _settings(grids)
    head = ["task", "fraction", "test domain", "read on", "best baseline", "best distilling"]
    head += ["− best baseline", "`--best` on seeds 0-2"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    met: dict[str, list[int]] = {"low-shot": [0, 0], "100 %": [0, 0]}
    # the low-shot cells first, then the 100 % ones (a stable sort keeps task order)
    for cell in sorted(_order(outs), key=lambda c: c[1] >= 1):
        full = cell[1] >= 1
        key, bar = ("100 %", FULL_LOSS) if full else ("low-shot", LOWSHOT_GAIN)
        ref_name, ref = _top(refs.get(cell, []), 3)
        out_name, out = _top(outs[cell], 3)
        three = "–" if ref is None or out is None else f"{out[0] - ref[0]:+.1f}"
        b5 = d5 = None
        if not full and cell in found and _complete(found[cell]):
            b5, d5 = _top_fresh(found[cell], True, "all"), _top_fresh(found[cell], False, "all")
        # a cell rerun with only its baselines (or only distilling settings) stays on seeds 0-2
        if b5 is not None and d5 is not None:
            read = "seeds 0-4"
            ref_name, ref, out_name, out = b5[0], b5[1]["all"], d5[0], d5[1]["all"]
        else:
            read = "seeds 0-2"
        row = [_NAMES[cell[0]], f"{cell[1] * 100:g} %", cell[2], read]
        row += [f"{_fmt(ref)} {ref_name}", f"{_fmt(out)} {out_name}"]
        if ref is None or out is None:
            row.append(_NO_REF if ref is None else "–")
        else:
            row.append(_tally(met, key, out, ref, bar))
        row.append("" if full else three)
        lines.append("| " + " | ".join(row) + " |")
    return lines, met


def _print_table(lines: list[str], met: dict, seeds: str = "mean of >= 3 seeds") -> None:
    print("\n".join(lines))
    print()
    for name, (ok, n) in met.items():
        print(f"- {name}: {ok} of {n} cells meet the target ({seeds})")


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
        "--full-method",
        default="MAD",
        help="the method of the 100 %% grids read against their baseline (--status)",
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
        "results/world*/table.json but the fresh-seed grids of --fresh)",
    )
    p.add_argument("--fresh", action="store_true", help="the picked settings on fresh seeds")
    p.add_argument(
        "--summary",
        action="store_true",
        help="one verdict per cell: on five seeds where --fresh reran the cell, else as --best",
    )
    args = p.parse_args(argv)
    if args.fresh:
        _print_table(*fresh_seeds(), seeds="means of seeds 0-4, every setting rerun")
        return 0
    if args.best is not None or args.summary:
        # the fresh-seed grids rerun settings of other grids on new seeds: --fresh reads them
        paths = args.best or sorted(
            t for t in _ROOT.glob("world*/table.json") if t.parent.name not in FRESH
        )
        grids: dict[str, Cells] = {}
        for path in paths:
            # a grid is named by its folder (results/<grid>/table.json), another file by its stem
            name = path.parent.name if path.name == "table.json" else path.stem
            if name in grids:
                p.error(f"--best: two grids named {name!r}; rename one file")
            grids[name] = _cells(path)
        if args.summary:
            _print_table(*summary(grids), seeds="five seeds where rerun, else >= 3")
        else:
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
    _print_table(
        *status(short, grid, _cells(args.augmented), full, stronger, full_method=args.full_method)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
