"""``mad-distill demo --quick`` end to end: the files it writes and the table's structure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from mad_distill.bench import demo
from mad_distill.bench.harness import BenchConfig


def test_quick_demo_writes_table_plot_and_runs(tmp_path, world_clip_spec, capsys):
    out = tmp_path / "demo"
    start = time.perf_counter()
    rc = demo.main(
        [
            "--quick",
            "--out-dir",
            str(out),
            "--teacher",
            world_clip_spec,
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    elapsed = time.perf_counter() - start
    assert rc == 0
    assert elapsed < 120, f"--quick took {elapsed:.0f} s (must be <= 2 min)"
    printed = capsys.readouterr().out
    bench = BenchConfig.from_yaml(demo.DEMO_CONFIG)
    methods = list(bench.methods)
    assert methods == ["baseline", "+TS", "+CW", "MAD"]
    # table.md: one column per method, one row per task x test domain (1 % only in --quick)
    md = (out / "table.md").read_text()
    lines = md.strip().splitlines()
    assert lines[0] == (
        "| task | condition | test domain | train fraction | " + " | ".join(methods) + " |"
    )
    body = lines[2:]
    assert len(body) == len(bench.tasks) * 2
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] in bench.tasks and cells[3] == "1 %"
        assert cells[1] == ("in-domain" if cells[2] == "flat" else "domain-shift")
        assert all(" ± " in c for c in cells[4:])
    assert md.strip() in printed
    table = json.loads((out / "table.json").read_text())
    assert table["train_domain"] == "flat"
    keys = {(r["task"], r["method"], r["test_domain"]) for r in table["rows"]}
    assert keys == {(t, m, d) for t in bench.tasks for m in methods for d in ("flat", "textured")}
    assert all(r["n_seeds"] == 1 and 0 <= r["mean"] <= 100 for r in table["rows"])
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "runs").glob("*.json"))) == len(bench.tasks) * len(methods)


def test_full_config_is_the_full_grid():
    full = BenchConfig.from_yaml(demo.FULL_CONFIG)
    assert full.tasks == ["vqa", "snli_ve", "vcr"]
    assert full.fractions == [0.01, 0.05, 0.1, 1.0]
    assert full.train_domain == "flat" and full.test_domains == ["flat", "textured"]
    assert len(full.seeds) >= 3
    assert list(full.methods) == ["baseline", "+TS", "+CW", "MAD"]
    assert full.methods["baseline"] is None
    # the ablations differ from MAD in exactly the part they ablate
    mad, ts, cw = full.methods["MAD"], full.methods["+TS"], full.methods["+CW"]
    assert ts["weight"]["mode"] == "uniform" and ts["select"] == mad["select"]
    assert cw["select"]["ratio"] == 1.0 and cw["weight"] == mad["weight"]


def test_bad_demo_arguments(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        demo.main(["--tasks", "bogus", "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="fractions"):
        demo.main(["--fractions", "0", "--out-dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        demo.main(["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        demo.main(["--student", str(tmp_path / "nope.safetensors"), "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--workers"):
        demo.main(["--workers", "0", "--out-dir", str(tmp_path)])
    if not torch.cuda.is_available():  # no silent CPU run instead
        with pytest.raises(ValueError, match="train.accelerator is 'cuda'"):
            demo.main(["--quick", "--accelerator", "gpu", "--out-dir", str(tmp_path / "gpu")])
        assert not (tmp_path / "gpu" / "runs").exists() or not any(
            (tmp_path / "gpu" / "runs").iterdir()
        )


def test_accelerator_reaches_the_bench_train_options():
    args = demo.build_parser().parse_args(["--accelerator", "cuda"])
    assert demo.demo_bench(args).train["accelerator"] == "cuda"
    assert "accelerator" not in demo.demo_bench(demo.build_parser().parse_args([])).train


def test_demo_runs_are_a_subset_of_the_committed_grids():
    """The README's tables come from benchmarks/world_lowshot.yaml and full.yaml; the demo reuses
    their runs only if its settings are the same (the harness fingerprints them)."""
    repo = Path(__file__).resolve().parents[2]
    dem = BenchConfig.from_yaml(demo.DEMO_CONFIG)
    for grid in (repo / "benchmarks" / "world_lowshot.yaml", demo.FULL_CONFIG):
        other = BenchConfig.from_yaml(grid)
        assert other.out_dir == "benchmarks/results/world", grid
        assert (other.dataset, other.tasks, other.train_domain, other.test_domains) == (
            dem.dataset,
            dem.tasks,
            dem.train_domain,
            dem.test_domains,
        )
        assert set(dem.fractions) <= set(other.fractions) and other.seeds == dem.seeds
        assert other.train == dem.train
        for name, settings in dem.methods.items():
            assert other.methods[name] == settings, (grid.name, name)
