"""benchmarks/training_overhead.py: one tiny CPU run with ``--profile`` (the JSON's shape)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "training_overhead.py"


def test_profile_records_host_time_launches_and_top_ops(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("training_overhead", _PATH)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "training_overhead", mod)
    spec.loader.exec_module(mod)
    argv = ["--device", "cpu", "--students", "builtin", "--steps", "1", "--repeats", "1",
            "--warmup", "1", "--batch-builtin", "2", "--no-memory", "--profile", "4",
            "--out", str(tmp_path)]  # fmt: skip
    result = mod.main(argv)
    saved = json.loads((tmp_path / "training_overhead-cpu.json").read_text())
    assert saved["students"] == json.loads(json.dumps(result["students"]))
    prof = saved["students"]["builtin"]["profile"]
    assert set(prof) == {"plain", "live", "cache"}
    for mode in prof.values():
        assert mode["self_cpu_ms_per_step"] > 0
        assert mode["launches_per_step"] == 0  # no CUDA here
        assert len(mode["top"]) == 4
        times = [t["self_cpu_ms_per_step"] for t in mode["top"]]
        assert times == sorted(times, reverse=True)
        assert all(t["calls_per_step"] > 0 for t in mode["top"])
