"""Assemble README.md from docs/readme_parts/ (run from the repository root).

The parts are the single source of each README section; `tests/test_readme_example.py` checks the
README's example block is the one that runs.
"""

from pathlib import Path

ORDER = [
    "00_intro.md",
    "demo.md",
    "world.md",
    "mixin.md",
    "core.md",
    "teachers.md",
    "real_data.md",
    "examples.md",
    "scale.md",
    "kernels.md",
    "vlkd.md",
    "zz_development.md",
]

if __name__ == "__main__":
    parts = Path(__file__).parent / "readme_parts"
    missing = sorted({p.name for p in parts.glob("*.md")} - set(ORDER))
    if missing:
        raise SystemExit(f"parts not placed in ORDER: {missing}")
    text = "\n".join((parts / name).read_text().rstrip() + "\n" for name in ORDER)
    Path("README.md").write_text(text)
    print(f"README.md: {len(text.splitlines())} lines")
