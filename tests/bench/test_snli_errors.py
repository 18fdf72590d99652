"""benchmarks/snli_errors.py: SNLI-VE errors split across "holds" and entailment ↔ neutral."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def se(benchmark_script):
    return benchmark_script("snli_errors")


def test_error_kinds_split_the_three_way_errors(se):
    # rows: true entailment / neutral / contradiction; 100 items
    m = [[30, 5, 3], [2, 25, 4], [1, 6, 24]]
    k = se.error_kinds(m)
    assert k["3-way"] == pytest.approx(79.0)
    assert k["entailment ↔ neutral"] == pytest.approx(7.0)  # 5 + 2
    assert k["across holds"] == pytest.approx(14.0)  # 3 + 4 + 1 + 6
    assert k["holds"] == pytest.approx(86.0)
    assert k["3-way"] == pytest.approx(100 - k["across holds"] - k["entailment ↔ neutral"])
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        se.error_kinds([[1, 0], [0, 1]])


def test_runs_are_grouped_over_seeds(se, tmp_path, capsys):
    runs = tmp_path / "grid" / "runs"
    runs.mkdir(parents=True)
    for seed, wrong in ((0, 0), (1, 10)):  # seed 1: 10 entailments called contradictions
        result = {
            "run": {"task": "snli_ve", "method": "MAD", "fraction": 0.05, "seed": seed},
            "confusion": {"flat": [[30 - wrong, 0, wrong], [0, 30, 0], [0, 0, 20]]},
        }
        (runs / f"snli_ve__MAD__frac0.05__seed{seed}.json").write_text(json.dumps(result))
    (runs / "vqa__MAD__frac0.05__seed0.json").write_text("{}")  # other tasks: not read
    found = se.collect([tmp_path / "grid"])
    assert list(found) == [("grid", "MAD", 0.05, "flat")]
    assert [s["3-way"] for s in found[("grid", "MAD", 0.05, "flat")]] == [100.0, 87.5]
    assert se.main([str(tmp_path / "grid")]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    want = "| grid | MAD | 5 % | flat | 2 | 93.8 ± 8.8 | 93.8 ± 8.8 | 6.2 ± 8.8 | 0.0 ± 0.0 |"
    assert row == want
    with pytest.raises(FileNotFoundError, match="no SNLI-VE runs"):
        se.collect([tmp_path])
