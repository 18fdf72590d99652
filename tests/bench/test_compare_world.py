"""benchmarks/compare_world.py: the README's status table against synthetic grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cw(benchmark_script):
    return benchmark_script("compare_world")


def _table(path: Path, rows: list[tuple[str, float, str, str, float, int]]) -> Path:
    path.write_text(
        json.dumps(
            {
                "rows": [
                    {
                        "task": t,
                        "fraction": f,
                        "test_domain": d,
                        "method": m,
                        "mean": v,
                        "std": 1.0,
                        "n_seeds": n,
                    }
                    for t, f, d, m, v, n in rows
                ]
            }
        )
    )
    return path


def test_status_takes_the_best_baseline_and_needs_three_seeds(cw, tmp_path, capsys):
    short = _table(
        tmp_path / "s.json",
        [("vqa", 0.01, "flat", "baseline", 60.0, 3), ("vcr", 0.01, "flat", "baseline", 70.0, 3)],
    )
    grid = _table(
        tmp_path / "g.json",
        [
            ("vqa", 0.01, "flat", "baseline", 61.0, 3),
            ("vqa", 0.01, "flat", "MAD-U", 66.0, 3),
            ("vcr", 0.01, "flat", "baseline", 69.0, 3),
            ("vcr", 0.01, "flat", "MAD-U", 75.0, 3),
        ],
    )
    aug = _table(
        tmp_path / "a.json",
        [
            # the augmented baseline is the best one on VQA: MAD-U clears 61 + 5 but not 62 + 5
            ("vqa", 0.01, "flat", "baseline-augmix", 62.0, 3),
            ("vqa", 0.01, "flat", "MAD-U-augmix-all", 68.0, 3),
            # one seed only: +6 does not count
            ("vcr", 0.01, "flat", "baseline-augmix", 60.0, 1),
            ("vcr", 0.01, "flat", "MAD-U-augmix-all", 76.0, 1),
        ],
    )
    full = _table(
        tmp_path / "f.json",
        [
            ("vqa", 1.0, "flat", "baseline", 72.0, 3),
            ("vqa", 1.0, "flat", "MAD", 70.5, 3),
            ("vcr", 1.0, "flat", "baseline", 75.0, 3),
            ("vcr", 1.0, "flat", "MAD", 74.2, 3),
        ],
    )
    lines, met = cw.status(cw._cells(short), cw._cells(grid), cw._cells(aug), cw._cells(full))
    assert met == {"MAD-U": [1, 2], "MAD-U + AugMix": [1, 2], "MAD at 100 %": [1, 2]}
    vqa = next(line for line in lines if line.startswith("| VQA | 1 %"))
    assert "**+4.0**" in vqa and "**+6.0** ✓" in vqa and vqa.endswith("| 72.0 ± 1.0 |")
    vcr = next(line for line in lines if line.startswith("| VCR Q→A | 1 %"))
    assert "76.0 ± 1.0 (n=1)" in vcr and "**+5.0** ✓" in vcr and "**+6.0** |" in vcr
    assert any(line.startswith("| VQA | 100 %") and "**-1.5** |" in line for line in lines)
    assert any(line.startswith("| VCR Q→A | 100 %") and "**-0.8** ✓" in line for line in lines)
    cw.main(
        [
            "--default-steps",
            str(short),
            "--grid",
            str(grid),
            "--augmented",
            str(aug),
            "--full",
            str(full),
            "--stronger",
            str(tmp_path / "absent.json"),
            "--status",
        ]
    )
    out = capsys.readouterr().out
    assert "- MAD-U: 1 of 2 cells meet the target" in out and "6000-step" not in out
    # the grid with the stronger teacher: one more column, counted like the others
    stronger = _table(
        tmp_path / "t.json",
        [
            ("vqa", 0.01, "flat", "MAD-U-augmix-all", 67.5, 3),
            ("vcr", 0.01, "flat", "MAD-U-augmix-all", 74.0, 3),
        ],
    )
    lines, met = cw.status(
        cw._cells(short), cw._cells(grid), cw._cells(aug), cw._cells(full), cw._cells(stronger)
    )
    assert met["MAD-U + AugMix, 6000-step teacher"] == [1, 2]
    vqa = next(line for line in lines if line.startswith("| VQA | 1 %"))
    assert "| 67.5 ± 1.0 |" in vqa and "**+5.5** ✓" in vqa
    # another 100 % method, from a grid read before the one with the baseline
    tap0 = _table(tmp_path / "t0.json", [("vqa", 1.0, "flat", "MAD-tap0", 71.2, 3)])
    argv = ["--default-steps", str(short), "--grid", str(grid), "--augmented", str(aug)]
    argv += ["--full", str(tap0), str(full), "--full-method", "MAD-tap0", "--status"]
    cw.main(argv + ["--stronger", str(tmp_path / "absent.json")])
    out = capsys.readouterr().out
    assert "| VQA | 100 % | flat | 72.0 ± 1.0 | 71.2 ± 1.0 | **-0.8** ✓ |" in out
    assert "- MAD-tap0 at 100 %: 1 of 1 cells meet the target" in out


def test_probe_reads_its_own_baselines_too(cw, tmp_path, capsys):
    aug = _table(tmp_path / "a.json", [("vqa", 0.01, "flat", "baseline-augmix", 61.0, 3)])
    short = _table(tmp_path / "s.json", [("vqa", 0.01, "flat", "baseline", 60.0, 3)])
    grid = _table(tmp_path / "g.json", [("vqa", 0.01, "flat", "baseline", 59.0, 3)])
    probe = _table(
        tmp_path / "p.json",
        [
            # the probe's own longer baseline is the best one in the 5 % cell only
            ("vqa", 0.01, "flat", "baseline-long", 58.0, 3),
            ("vqa", 0.01, "flat", "KL", 66.5, 3),
            ("vqa", 0.01, "flat", "KL-feat", 65.0, 3),
            ("vqa", 0.05, "flat", "baseline-long", 64.0, 3),
            ("vqa", 0.05, "flat", "KL", 69.5, 2),
        ],
    )
    baselines = [("AugMix", cw._cells(aug), "baseline-augmix")]
    lines, met = cw.probe(cw._cells(probe), baselines)
    assert lines[0] == "| task | fraction | test domain | best baseline | which | KL | KL-feat |"
    assert met == {"KL": [1, 2], "KL-feat": [0, 1]}
    one = next(line for line in lines if line.startswith("| VQA | 1 %"))
    assert "| 61.0 ± 1.0 | AugMix |" in one and "66.5 ± 1.0 (**+5.5** ✓)" in one
    five = next(line for line in lines if line.startswith("| VQA | 5 %"))
    assert "baseline-long (this grid)" in five and "(n=2) (**+5.5**)" in five and "| – |" in five
    argv = ["--default-steps", str(short), "--grid", str(grid), "--augmented", str(aug)]
    assert cw.main(argv + ["--probe", str(probe)]) == 0
    out = capsys.readouterr().out
    assert "- KL: 1 of 2 cells meet the target" in out
    # the status baselines count too: the 600-step one is not the best here, 60.0 / 61.0 are
    assert "| 61.0 ± 1.0 | AugMix |" in out


def test_a_cell_without_a_baseline_is_shown_not_counted(cw, tmp_path):
    aug = _table(tmp_path / "a.json", [("vqa", 0.01, "flat", "baseline-augmix", 61.0, 3)])
    probe = _table(
        tmp_path / "p.json",
        [("vqa", 0.01, "flat", "KL", 66.5, 3), ("vqa", 0.1, "flat", "KL", 70.0, 3)],
    )
    lines, met = cw.probe(cw._cells(probe), [("AugMix", cw._cells(aug), "baseline-augmix")])
    assert met == {"KL": [1, 1]}
    ten = next(line for line in lines if line.startswith("| VQA | 10 %"))
    assert ten == "| VQA | 10 % | flat | – | no baseline | 70.0 ± 1.0 |"
    empty = cw._cells(_table(tmp_path / "e.json", []))
    grid = cw._cells(_table(tmp_path / "g.json", [("vcr", 0.05, "flat", "MAD-U", 74.0, 3)]))
    lines, met = cw.status(empty, grid, empty, empty)
    assert met == {"MAD-U": [0, 0], "MAD-U + AugMix": [0, 0]}
    vcr = next(line for line in lines if line.startswith("| VCR Q→A | 5 %"))
    assert "| 74.0 ± 1.0 |" in vcr and "| no baseline |" in vcr


def test_committed_results_print(cw, capsys):
    assert cw.main([]) == 0
    assert capsys.readouterr().out.startswith("| task | fraction |")
    assert cw.main(["--status"]) == 0
    out = capsys.readouterr().out
    assert "| VCR Q→A | 100 % | flat |" in out and "- MAD-U + AugMix: " in out
    assert cw.main(["--best"]) == 0
    assert "- best setting per cell: " in capsys.readouterr().out


def test_best_takes_the_top_three_seed_setting_per_cell_over_all_grids(cw, tmp_path, capsys):
    a = _table(
        tmp_path / "a.json",
        [
            ("vqa", 0.01, "flat", "baseline", 60.0, 3),
            ("vqa", 0.01, "flat", "MAD-U", 66.0, 3),
            ("vqa", 0.01, "textured", "baseline", 50.0, 3),
            ("vqa", 0.01, "textured", "MAD-U", 54.0, 3),
            # 100 %: its own table, against "baseline - 1"
            ("vqa", 1.0, "flat", "MAD", 70.0, 3),
            ("vqa", 1.0, "flat", "baseline", 71.0, 3),
            ("vqa", 1.0, "textured", "MAD", 49.0, 3),
            ("vqa", 1.0, "textured", "baseline", 50.5, 3),
        ],
    )
    b = _table(
        tmp_path / "b.json",
        [
            # the bar: the best baseline over >= 3 seeds, from any grid
            ("vqa", 0.01, "flat", "baseline-augmix", 61.0, 3),
            # one seed: shown beside the bar, never the bar
            ("vqa", 0.01, "flat", "baseline-long", 63.0, 1),
            ("vqa", 0.01, "flat", "KL", 67.0, 3),
            ("vqa", 0.01, "flat", "KL-lucky", 80.0, 2),  # two seeds: not a candidate
            ("vqa", 0.01, "textured", "KL", 54.5, 3),
            ("vcr", 0.05, "flat", "KL", 74.0, 3),  # no baseline ran in this cell
        ],
    )
    lines, met = cw.best({"a": cw._cells(a), "b": cw._cells(b)})
    assert met == {"best setting per cell": [1, 2], "best setting at 100 %": [1, 2]}
    # the low-shot table first, then the 100 % one after a blank line
    gap = lines.index("")
    assert not any("100 %" in line for line in lines[:gap])
    full = [line for line in lines[gap:] if line.startswith("| VQA | 100 %")]
    assert full == [
        "| VQA | 100 % | flat | 71.0 ± 1.0 | a/baseline | 70.0 ± 1.0 | a/MAD | **-1.0** ✓ |  |",
        "| VQA | 100 % | textured | 50.5 ± 1.0 | a/baseline | 49.0 ± 1.0 | a/MAD | **-1.5** |  |",
    ]
    flat = next(line for line in lines if line.startswith("| VQA | 1 % | flat"))
    assert flat == (
        "| VQA | 1 % | flat | 61.0 ± 1.0 | b/baseline-augmix | 67.0 ± 1.0 | b/KL | **+6.0** ✓ "
        "| 63.0 ± 1.0 (n=1): b/baseline-long |"
    )
    tex = next(line for line in lines if line.startswith("| VQA | 1 % | textured"))
    # a's MAD-U (54.0) loses to b's KL; a's baseline is the bar; +4.5 is not met
    assert tex == (
        "| VQA | 1 % | textured | 50.0 ± 1.0 | a/baseline | 54.5 ± 1.0 | b/KL | **+4.5** |  |"
    )
    vcr = next(line for line in lines if line.startswith("| VCR Q→A | 5 %"))
    assert "| – | – | 74.0 ± 1.0 | b/KL | no baseline |" in vcr
    assert cw.main(["--best", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "- best setting per cell: 1 of 2 cells meet the target" in out
    assert "- best setting at 100 %: 1 of 2 cells meet the target" in out
    # two files the table would name alike: refused, not silently merged
    (tmp_path / "other").mkdir()
    twin = _table(tmp_path / "other" / "a.json", [])
    with pytest.raises(SystemExit):
        cw.main(["--best", str(a), str(twin)])
    assert "two grids named 'a'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --fresh
def _grid(path: Path, seeds: list[int], out: Path, min_steps: int = 600, **methods) -> Path:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "tasks": ["vqa"],
                "fractions": [0.01],
                "seeds": seeds,
                "methods": methods,
                "train": {"min_steps": min_steps},
                "out_dir": str(out),
            }
        )
    )
    return path


def _runs(out: Path, method: str, values: dict[int, tuple[float, float]]) -> None:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for seed, (flat, textured) in values.items():
        path = out / "runs" / f"vqa__{method}__frac0.01__seed{seed}.json"
        path.write_text(json.dumps({"metrics": {"flat": flat, "textured": textured}}))


def test_fresh_reads_the_picked_settings_on_new_seeds(cw, tmp_path, capsys):
    mad = {"select": {"ratio": 0.3}, "augment": {"kind": "augmix", "labeled": True}}
    # the fresh grid spells the baseline otherwise (a null method, another teacher): same run
    _grid(tmp_path / "src.yaml", [0, 1, 2], tmp_path / "src", baseline=None, MAD=mad)
    _grid(tmp_path / "new.yaml", [3, 4], tmp_path / "new", baseline={"distill": False}, MAD=mad)
    _runs(tmp_path / "src", "baseline", {0: (60, 50), 1: (61, 51), 2: (62, 52)})
    _runs(tmp_path / "src", "MAD", {0: (66, 55), 1: (67, 56), 2: (68, 57)})
    _runs(tmp_path / "new", "baseline", {3: (62, 50)})
    fresh = {"new": {"baseline": "src", "MAD": "src"}}
    lines, met = cw.fresh_seeds(fresh, tmp_path)
    assert (
        "| VQA | 1 % | flat | src/baseline | 61.0 ± 1.0 | 62.0 ± 0.0 (n=1) | 61.2 ± 1.0 |" in lines
    )
    flat = next(ln for ln in lines if ln.startswith("| VQA | 1 % | flat | src/baseline / src/MAD"))
    # +6 on seeds 0-2; the MAD run of seed 3 is missing: no fresh margin, no verdict yet
    assert "| +6.0 | – | – (fresh seeds missing) | – |" in flat and met["all seeds"] == [0, 0]
    _runs(tmp_path / "new", "baseline", {4: (63, 51)})
    _runs(tmp_path / "new", "MAD", {3: (66, 55), 4: (67, 53)})
    lines, met = cw.fresh_seeds(fresh, tmp_path)
    flat = next(ln for ln in lines if ln.startswith("| VQA | 1 % | flat | src/baseline / src/MAD"))
    # fresh: 66.5 - 62.5 = +4.0; all five: 66.8 - 61.6 = +5.2 (met); textured: 55.2 - 50.8
    assert (
        "| +6.0 | +4.0 (n=2) | 61.6 ± 1.1 src/baseline / 66.8 ± 0.8 src/MAD | **+5.2** ✓ |" in flat
    )
    assert met["all seeds"] == [1, 2]
    # a fresh grid whose method is another setting is refused, naming what differs
    _grid(tmp_path / "new.yaml", [3, 4], tmp_path / "new", 900, baseline=None, MAD=mad)
    with pytest.raises(ValueError, match=r"new/baseline is not src/baseline .*\['train'\] differ"):
        cw.fresh_seeds(fresh, tmp_path)
    # the same seed in the fresh grid and its source: refused
    _grid(tmp_path / "new.yaml", [2, 3, 4], tmp_path / "new", baseline=None, MAD=mad)
    _runs(tmp_path / "new", "MAD", {2: (68, 57)})
    with pytest.raises(ValueError, match="seed 2 also in src"):
        cw.fresh_seeds(fresh, tmp_path)


def test_committed_fresh_grids_rerun_their_sources_settings(cw, capsys):
    # every benchmarks/world_seeds_*.yaml is read by --fresh, and each of its methods has the
    # run_settings of the grid it names (else fresh_seeds raises)
    names = {p.stem for p in (Path(cw.__file__).parent).glob("world_seeds_*.yaml")}
    assert names == set(cw.FRESH)
    assert cw.main(["--fresh"]) == 0
    assert "| task | fraction | test domain | best on seeds 0-2" in capsys.readouterr().out


def test_summary_reads_rerun_cells_on_five_seeds_and_the_rest_as_best(cw, tmp_path, capsys):
    mad = {"select": {"ratio": 0.3}}
    _grid(tmp_path / "src.yaml", [0, 1, 2], tmp_path / "src", baseline=None, MAD=mad)
    _grid(tmp_path / "new.yaml", [3, 4], tmp_path / "new", baseline=None, MAD=mad)
    _runs(tmp_path / "src", "baseline", {0: (60, 50), 1: (61, 51), 2: (62, 52)})
    _runs(tmp_path / "src", "MAD", {0: (66, 55), 1: (67, 56), 2: (68, 57)})
    _runs(tmp_path / "new", "baseline", {3: (62, 50), 4: (63, 51)})
    _runs(tmp_path / "new", "MAD", {3: (66, 55), 4: (67, 53)})
    fresh = {"new": {"baseline": "src", "MAD": "src"}}
    src = _table(
        tmp_path / "src.json",
        [
            ("vqa", 0.01, "flat", "baseline", 61.0, 3),
            ("vqa", 0.01, "flat", "MAD", 67.0, 3),
            ("vqa", 0.01, "textured", "baseline", 51.0, 3),
            ("vqa", 0.01, "textured", "MAD", 56.0, 3),
            # not rerun on fresh seeds: read on seeds 0-2
            ("vqa", 0.05, "flat", "baseline", 65.0, 3),
            ("vqa", 0.05, "flat", "MAD", 70.5, 3),
            ("vqa", 1.0, "flat", "baseline", 72.0, 3),
            ("vqa", 1.0, "flat", "MAD", 71.5, 3),
        ],
    )
    # a setting that was not rerun beats the rerun ones on seeds 0-2: shown in the last column
    other = _table(tmp_path / "other.json", [("vqa", 0.01, "textured", "KL", 57.5, 3)])
    grids = {"src": cw._cells(src), "other": cw._cells(other)}
    lines, met = cw.summary(grids, fresh, tmp_path)
    rows = lines[2:]
    # five seeds: 66.8 - 61.6 = +5.2 (met); seeds 0-2 (--best): 67.0 - 61.0 = +6.0
    assert rows[0] == (
        "| VQA | 1 % | flat | seeds 0-4 | 61.6 ± 1.1 src/baseline | 66.8 ± 0.8 src/MAD "
        "| **+5.2** ✓ | +6.0 |"
    )
    # textured on five seeds: 55.2 - 50.8 = +4.4 (not met), though --best's pick (other/KL)
    # has +6.5 on seeds 0-2
    assert rows[1].startswith("| VQA | 1 % | textured | seeds 0-4 | 50.8 ± 0.8 src/baseline")
    assert rows[1].endswith("| **+4.4** | +6.5 |")
    assert rows[2] == (
        "| VQA | 5 % | flat | seeds 0-2 | 65.0 ± 1.0 src/baseline | 70.5 ± 1.0 src/MAD "
        "| **+5.5** ✓ | +5.5 |"
    )
    # the 100 % cells last, against "baseline - 1", without a --best column
    assert rows[3] == (
        "| VQA | 100 % | flat | seeds 0-2 | 72.0 ± 1.0 src/baseline | 71.5 ± 1.0 src/MAD "
        "| **-0.5** ✓ |  |"
    )
    assert met == {"low-shot": [2, 3], "100 %": [1, 1]}
    # the committed results print it
    assert cw.main(["--summary"]) == 0
    out = capsys.readouterr().out
    assert "- low-shot:" in out and "- 100 %:" in out


def test_summary_reads_a_cell_whose_rerun_has_only_baselines_on_seeds_0_to_2(cw, tmp_path):
    # a fresh grid that reruns a cell's baselines but none of its distilling settings (the
    # dropout-0 baselines' grids) leaves nothing to read on five seeds for that cell
    _grid(tmp_path / "src.yaml", [0, 1, 2], tmp_path / "src", baseline=None)
    _grid(tmp_path / "new.yaml", [3, 4], tmp_path / "new", baseline=None)
    _runs(tmp_path / "src", "baseline", {0: (60, 50), 1: (61, 51), 2: (62, 52)})
    _runs(tmp_path / "new", "baseline", {3: (62, 50), 4: (63, 51)})
    src = _table(
        tmp_path / "src.json",
        [("vqa", 0.01, "flat", "baseline", 61.0, 3), ("vqa", 0.01, "flat", "MAD", 67.0, 3)],
    )
    lines, met = cw.summary({"src": cw._cells(src)}, {"new": {"baseline": "src"}}, tmp_path)
    assert lines[2] == (
        "| VQA | 1 % | flat | seeds 0-2 | 61.0 ± 1.0 src/baseline | 67.0 ± 1.0 src/MAD "
        "| **+6.0** ✓ | +6.0 |"
    )
    assert met["low-shot"] == [1, 1]
