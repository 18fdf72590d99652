"""Where SNLI-VE's errors sit: across "holds" or between entailment and neutral.

The world's SNLI-VE teacher can tell whether a hypothesis holds (entailment + neutral vs
contradiction) but not entailment from neutral: the neutral hypothesis adds a clause no image can
verify (``MADConfig.class_groups``, README). A 3-way error is one of two kinds, as a share of the
test items, from the confusion matrices SNLI-VE runs record (run JSON ``"confusion"``,
``[true][predicted]`` in entailment / neutral / contradiction order):

- *across holds*: contradiction predicted for a hypothesis that holds, or the reverse, the kind
  the teacher's grouped answers can teach; ``holds`` accuracy = 100 − this;
- *entailment ↔ neutral*: the kind only the labels (and the text) can teach.

3-way accuracy = 100 − both. Prints one Markdown row per grid × method × fraction × test domain,
mean ± std over seeds.

    python benchmarks/snli_errors.py                      # the committed analysis grids
    python benchmarks/snli_errors.py benchmarks/results/<grid> ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parent / "results"
DEFAULT_GRIDS = (_ROOT / "world_snli_errors_baseline", _ROOT / "world_snli_errors")


def error_kinds(confusion) -> dict[str, float]:
    """``{"3-way", "holds", "across holds", "entailment ↔ neutral"}`` in % of the items of one
    ``[3, 3]`` confusion matrix (rows: true class)."""
    m = np.asarray(confusion, dtype=float)
    if m.shape != (3, 3) or m.sum() <= 0:
        raise ValueError(f"an SNLI-VE confusion matrix is [3, 3] with items, got {m.shape}")
    n = m.sum()
    across = (m[:2, 2].sum() + m[2, :2].sum()) / n
    within = (m[0, 1] + m[1, 0]) / n
    return {
        "3-way": 100 * np.trace(m) / n,
        "holds": 100 * (1 - across),
        "across holds": 100 * across,
        "entailment ↔ neutral": 100 * within,
    }


def collect(grids) -> dict[tuple[str, str, float, str], list[dict[str, float]]]:
    """``{(grid, method, fraction, test domain): [error_kinds per seed]}`` of the SNLI-VE runs
    that recorded a confusion matrix."""
    out: dict[tuple[str, str, float, str], list[dict[str, float]]] = {}
    for grid in map(Path, grids):
        runs = sorted((grid / "runs").glob("snli_ve__*.json"))
        if not runs:
            raise FileNotFoundError(f"no SNLI-VE runs under {grid / 'runs'}")
        for path in runs:
            result = json.loads(path.read_text())
            run = result["run"]
            for domain, confusion in result.get("confusion", {}).items():
                key = (grid.name, run["method"], run["fraction"], domain)
                out.setdefault(key, []).append(error_kinds(confusion))
    return out


def table(found) -> list[str]:
    kinds = ["3-way", "holds", "across holds", "entailment ↔ neutral"]
    head = ["grid", "method", "fraction", "test domain", "seeds"] + kinds
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (grid, method, frac, domain), seeds in sorted(found.items()):
        row = [grid, method, f"{frac * 100:g} %", domain, str(len(seeds))]
        for kind in kinds:
            values = [s[kind] for s in seeds]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            row.append(f"{statistics.fmean(values):.1f} ± {std:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grids", nargs="*", type=Path, default=list(DEFAULT_GRIDS))
    args = p.parse_args(argv)
    print("\n".join(table(collect(args.grids))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
