"""The bench harness with a fake runner: grid, resume, aggregation, report files, bad configs."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from mad_distill.bench import harness
from mad_distill.bench.harness import BenchConfig, RunSpec


def _fake_runner(calls: list):
    def run(run: RunSpec, bench: BenchConfig) -> dict:
        calls.append(run.key)
        base = 50 + 10 * (run.method == "mad") + run.seed
        return {"metrics": {d: base - 5 * (d != bench.train_domain) for d in bench.test_domains}}

    return run


def _bench(tmp_path, **kw) -> BenchConfig:
    args = dict(
        tasks=["vqa", "vcr"],
        fractions=[0.01, 1.0],
        seeds=[0, 1, 2],
        methods={"baseline": None, "mad": {"select": {"ratio": 0.3}}},
        out_dir=str(tmp_path / "out"),
    )
    args.update(kw)
    return BenchConfig(**args)


def test_grid_runs_resumes_and_reports(tmp_path):
    bench = _bench(tmp_path)
    calls: list = []
    results = harness.run_bench(bench, runner=_fake_runner(calls), log=lambda s: None)
    assert len(results) == len(calls) == 2 * 2 * 3 * 2
    # resume: nothing runs again
    calls2: list = []
    again = harness.run_bench(bench, runner=_fake_runner(calls2), log=lambda s: None)
    assert calls2 == [] and len(again) == len(results)
    # a changed method config invalidates only that method's runs
    bench.methods["mad"] = {"select": {"ratio": 0.5}}
    calls3: list = []
    harness.run_bench(bench, runner=_fake_runner(calls3), log=lambda s: None)
    assert len(calls3) == 12 and all("/mad/" in k for k in calls3)

    report = harness.write_report(again, _bench(tmp_path))
    rows = report["aggregate"]["rows"]
    row = next(
        r
        for r in rows
        if r["task"] == "vqa"
        and r["method"] == "mad"
        and r["fraction"] == 0.01
        and r["test_domain"] == "flat"
    )
    assert row["mean"] == pytest.approx(61.0) and row["std"] == pytest.approx(1.0)
    assert row["condition"] == "in-domain" and row["n_seeds"] == 3
    shifted = next(r for r in rows if r["test_domain"] == "textured")
    assert shifted["condition"] == "domain-shift"
    out = tmp_path / "out"
    assert "61.0 ± 1.0" in (out / "table.md").read_text()
    assert json.loads((out / "table.json").read_text())["rows"] == rows
    assert (out / "plot.png").stat().st_size > 1000


def test_half_written_run_is_not_taken_as_done(tmp_path):
    bench = _bench(tmp_path, tasks=["vqa"], fractions=[1.0], seeds=[0], methods={"b": None})
    run = harness.expand_grid(bench)[0]
    path = harness._run_path(tmp_path / "out", run)
    path.parent.mkdir(parents=True)
    path.write_text('{"metrics": {"flat": 1')  # truncated
    calls: list = []
    harness.run_bench(bench, runner=_fake_runner(calls), log=lambda s: None)
    assert calls == [run.key]
    assert not list(path.parent.glob("*.tmp"))


def test_std_is_sample_std(tmp_path):
    bench = _bench(tmp_path)
    res = [
        {"run": {"task": "t", "method": "m", "fraction": 1.0, "seed": s}, "metrics": {"flat": v}}
        for s, v in enumerate([1.0, 2.0, 6.0])
    ]
    (row,) = harness.aggregate(res, bench)["rows"]
    assert row["std"] == pytest.approx(round(math.sqrt(7.0), 3))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(dataset="nope"), "dataset"),
        (dict(fractions=[0.0]), "fractions"),
        (dict(fractions=[1.5]), "fractions"),
        (dict(seeds=[]), "seeds"),
        (dict(methods={}), "methods"),
        (dict(methods={"mad": 3}), "methods.mad"),
    ],
)
def test_bad_bench_config(tmp_path, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _bench(tmp_path, **kw)


def test_from_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        BenchConfig.from_yaml(tmp_path / "missing.yaml")
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump({"tasks": ["vqa"], "epochs": 3}))
    with pytest.raises(ValueError, match="epochs"):
        BenchConfig.from_yaml(p)
    p.write_text(yaml.safe_dump({"tasks": ["vqa"], "seeds": [0]}))
    assert BenchConfig.from_yaml(p).tasks == ["vqa"]


def test_overrides_set_dotted_fields(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text(
        yaml.safe_dump(
            {"tasks": ["vqa"], "methods": {"baseline": None, "MAD": {"kl": {"tau": 2.0}}}}
        )
    )
    bench = BenchConfig.from_yaml(
        p, ["train.accelerator=cuda", "seeds=[3, 4]", "methods.MAD.kl.tau=1.5", "fractions=[1]"]
    )
    assert bench.train == {"accelerator": "cuda"}  # a missing mapping is made
    assert bench.seeds == [3, 4] and bench.fractions == [1]
    assert bench.methods["MAD"] == {"kl": {"tau": 1.5}} and bench.methods["baseline"] is None
    for bad, match in [
        ("train.accelerator", "expected dotted.key=value"),
        ("=3", "expected dotted.key=value"),
        ("train..lr=1", "expected dotted.key=value"),
        ("tasks.vqa=1", "tasks is not a mapping"),
        # a null baseline is not silently turned into a MAD config with defaults
        ("methods.baseline.kl.tau=1", "methods.baseline is not a mapping"),
        ("epochs=3", "unknown field"),
        ("fractions=[0]", "fractions"),
    ]:
        with pytest.raises(ValueError, match=match):
            BenchConfig.from_yaml(p, [bad])


def test_bench_cli_applies_overrides(tmp_path, monkeypatch):
    seen = {}

    def fake_run_bench(bench, workers=1):
        seen["bench"] = bench
        return []

    monkeypatch.setattr(harness, "run_bench", fake_run_bench)
    monkeypatch.setattr(harness, "write_report", lambda results, bench: {"markdown": ""})
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump({"tasks": ["vqa"], "train": {"lr": 0.1}}))
    harness.main(["--config", str(p), "--set", "train.lr=0.5", "--set", "seeds=[7]"])
    assert seen["bench"].train == {"lr": 0.5} and seen["bench"].seeds == [7]


def test_every_run_is_checked_before_any_starts(tmp_path):
    # the world runner's check_run: a bad field in the last method fails before the first run
    bench = _bench(tmp_path, methods={"baseline": None, "mad": {"selct": {"ratio": 0.3}}})
    calls: list = []
    with pytest.raises(ValueError, match=r"vqa/mad/frac0.01/seed0: .*unknown field.*selct"):
        harness.run_bench(bench, runner=_fake_runner(calls), log=lambda s: None)
    assert calls == []
    with pytest.raises(ValueError, match=r"gqa/baseline/frac0.01/seed0: task: unknown world task"):
        harness.run_bench(
            _bench(tmp_path, tasks=["gqa"]), runner=_fake_runner(calls), log=lambda s: None
        )
    assert calls == []


def test_a_registered_runner_checks_runs(tmp_path, monkeypatch):
    checked: list = []

    def check(run: RunSpec, bench: BenchConfig) -> None:
        checked.append(run.key)
        if run.method == "mad" and run.seed == 2:
            raise ValueError("seed 2 is bad")

    runner = _fake_runner([])
    runner.check_run = check  # type: ignore[attr-defined]
    monkeypatch.setitem(harness.RUNNERS, "fake", runner)
    calls: list = []
    with pytest.raises(ValueError, match="vqa/mad/frac0.01/seed2: seed 2 is bad"):
        harness.run_bench(
            _bench(tmp_path, dataset="fake"), runner=_fake_runner(calls), log=lambda s: None
        )
    assert calls == [] and len(checked) == 6  # stops at the first bad run
    # runs already finished are not checked again: they are skipped anyway
    monkeypatch.setattr(runner, "check_run", lambda run, bench: checked.append(run.key))
    checked.clear()
    harness.run_bench(_bench(tmp_path, dataset="fake", seeds=[0]), runner=_fake_runner(calls))
    assert len(checked) == len(calls) == 8
    checked.clear()
    harness.run_bench(_bench(tmp_path, dataset="fake", seeds=[0]), runner=_fake_runner(calls))
    assert checked == []
