"""Fixtures of the world bench tests: a random-weight ``MAD-World-CLIP`` teacher file, and
``benchmark_script`` to import a ``benchmarks/`` script as a module.

The tests exercise the runner's plumbing, not the shipped teacher's quality, so they build the
world teacher's architecture with random weights (seconds) and pass it as a spec string, exactly
as a user passes a self-pretrained teacher.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """``load(name)``: ``benchmarks/<name>.py`` imported as a module (the folder is no package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, _BENCHMARKS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="session")
def world_clip_spec(tmp_path_factory) -> str:
    import open_clip

    from mad_distill.data.world.pretrain import register_model_config

    name = register_model_config()
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    path = tmp_path_factory.mktemp("world_clip") / "random_world_clip.pt"
    torch.save(model.state_dict(), path)
    return f"open_clip:{name}@{path}"
