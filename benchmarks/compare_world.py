"""The README's unlabelled-inputs table: each method of a grid against the better of two baselines.

Reads the ``table.json`` of the low-shot grid (the baseline with the default steps) and of the
unlabelled grid (every method at 600 steps) and prints one Markdown row per task x fraction x
test domain, with ``method − better baseline`` for ``--method``.

    python benchmarks/compare_world.py   # defaults: the committed results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_ROOT = Path(__file__).resolve().parent / "results"
_NAMES = {"vqa": "VQA", "snli_ve": "SNLI-VE", "vcr": "VCR Q→A"}


def _cells(path: Path) -> dict[tuple[str, float, str, str], tuple[float, float]]:
    rows = json.loads(path.read_text())["rows"]
    return {
        (r["task"], r["fraction"], r["test_domain"], r["method"]): (r["mean"], r["std"])
        for r in rows
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--default-steps", type=Path, default=_ROOT / "world" / "table.json")
    p.add_argument("--grid", type=Path, default=_ROOT / "world_unlabeled" / "table.json")
    p.add_argument("--methods", nargs="+", default=["MAD", "MAD-U"])
    p.add_argument("--method", default="MAD-U", help="the method compared with the baselines")
    args = p.parse_args(argv)
    short, grid = _cells(args.default_steps), _cells(args.grid)
    head = ["task", "fraction", "test domain", "baseline (default steps)", "baseline (600 steps)"]
    head += [f"{m} (600 steps)" if m != args.method else m for m in args.methods]
    head.append(f"{args.method} − best baseline")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    keys = sorted({k[:3] for k in grid}, key=lambda k: (list(_NAMES).index(k[0]), k[1], k[2]))
    for task, frac, dom in keys:
        b1, b2 = short[(task, frac, dom, "baseline")], grid[(task, frac, dom, "baseline")]
        cells = [_NAMES[task], f"{frac * 100:g} %", dom]
        cells += [f"{m:.1f} ± {s:.1f}" for m, s in (b1, b2)]
        cells += [
            f"{grid[(task, frac, dom, m)][0]:.1f} ± {grid[(task, frac, dom, m)][1]:.1f}"
            for m in args.methods
        ]
        delta = grid[(task, frac, dom, args.method)][0] - max(b1[0], b2[0])
        cells.append(f"**{delta:+.1f}**")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
