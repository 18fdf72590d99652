"""benchmarks/by_type.py: accuracy per question type, students (over seeds) beside teachers."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bt(benchmark_script):
    return benchmark_script("by_type")


def _grid(tmp_path, name="grid"):
    runs = tmp_path / name / "runs"
    runs.mkdir(parents=True)
    for seed, colour in ((0, 80.0), (1, 90.0)):
        result = {
            "run": {"task": "vqa", "method": "MAD", "fraction": 0.05, "seed": seed},
            "metrics": {"flat": colour - 10, "textured": 50.0},
            "by_type": {"flat": {"colour": colour, "count": 60.0}, "textured": {}},
        }
        (runs / f"vqa__MAD__frac0.05__seed{seed}.json").write_text(json.dumps(result))
    old = {"run": {"task": "vqa", "method": "old", "fraction": 0.05, "seed": 0}}
    (runs / "vqa__old__frac0.05__seed0.json").write_text(json.dumps(old))  # no by_type: skipped
    return tmp_path / name


def _teacher(tmp_path):
    path = tmp_path / "teacher.json"
    path.write_text(
        json.dumps(
            {
                "vqa": {"flat": {"accuracy": 70.0, "type/colour": 75.0, "type/count": 65.0}},
                "snli_ve": {
                    "flat": {"accuracy": 50.0, "holds": 80.0, "type/size": 40.0, "holds/size": 90.0}
                },
            }
        )
    )
    return path


def test_seeds_are_averaged_per_type_beside_the_teacher(bt, tmp_path):
    grid = _grid(tmp_path)
    found = bt.collect([grid], "flat")
    assert list(found) == [("vqa", "grid", "MAD", 0.05)]  # the run without by_type is skipped
    teachers = bt.teacher_rows([_teacher(tmp_path)], "flat")
    # SNLI-VE teachers are read as their "holds" judgement, per type and overall
    assert teachers["snli_ve"]["teacher"] == {"size": 90.0, "all": 80.0}
    table = bt.tables([grid], [_teacher(tmp_path)], "flat")
    assert "| who | fraction | colour | count | all |" in table
    assert "| grid/MAD (n=2) | 5% | 85.0 | 60.0 | 75.0 |" in table
    assert "| teacher teacher (zero-shot) | – | 75.0 | 65.0 | 70.0 |" in table


def test_bad_input_is_named(bt, tmp_path):
    grid = _grid(tmp_path)
    with pytest.raises(KeyError, match="no test domain 'sketch'"):
        bt.collect([grid], "sketch")
    with pytest.raises(ValueError, match="two grids with the same name"):
        bt.collect([grid, grid], "flat")
    with pytest.raises(FileNotFoundError, match="no runs under"):
        bt.collect([tmp_path / "missing"], "flat")
    with pytest.raises(FileNotFoundError, match="no teacher zero-shot file"):
        bt.teacher_rows([tmp_path / "missing.json"], "flat")
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"snli_ve": {"flat": {"holds": 80.0, "type/size": 40.0}}}))
    with pytest.raises(KeyError, match="no holds/<qtype>"):
        bt.teacher_rows([stale], "flat")


def _vs(student, teacher, agreement, t_only, s_only):
    return dict(
        student=student,
        teacher=teacher,
        agreement=agreement,
        teacher_only=t_only,
        student_only=s_only,
    )


def test_vs_teacher_averages_seeds_overall_and_per_type(bt, tmp_path):
    runs = tmp_path / "vs" / "runs"
    runs.mkdir(parents=True)
    for seed, agree in ((0, 70.0), (1, 80.0)):
        colour = _vs(60.0, 90.0, agree, 30.0 + seed, 0.0)
        result = {
            "run": {"task": "snli_ve", "method": "MAD", "fraction": 0.05, "seed": seed},
            "metrics": {"flat": 1.0},
            "vs_teacher": {
                "flat": {**_vs(70.0, 80.0, agree, 15.0, 5.0), "by_type": {"colour": colour}}
            },
        }
        (runs / f"snli_ve__MAD__frac0.05__seed{seed}.json").write_text(json.dumps(result))
    table = bt.vs_teacher_tables(
        [tmp_path / "vs", _grid(tmp_path)], "flat"
    )  # no vs_teacher: skipped
    assert "SNLI-VE, `flat` test items: student vs teacher (holds)" in table
    assert "| vs/MAD (n=2) | 5% | 70.0 | 80.0 | 75.0 | 15.0 | 5.0 | 30.5 / 0.0 |" in table
    with pytest.raises(ValueError, match="no run recorded vs_teacher"):
        bt.vs_teacher_tables([_grid(tmp_path, "other")], "flat")
    with pytest.raises(KeyError, match="no test domain 'sketch' in vs_teacher"):
        bt.vs_teacher_tables([tmp_path / "vs"], "sketch")
