"""Fixtures of the world bench tests: a random-weight ``MAD-World-CLIP`` teacher file.

The tests exercise the runner's plumbing, not the shipped teacher's quality, so they build the
world teacher's architecture with random weights (seconds) and pass it as a spec string, exactly
as a user passes a self-pretrained teacher.
"""

from __future__ import annotations

import pytest
import torch


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
