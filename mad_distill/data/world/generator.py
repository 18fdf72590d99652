"""Deterministic world generation: every scene, image and task instance is a pure function of
``(world_seed, split, index)``.

Random streams are separated by a namespace word in a :class:`numpy.random.SeedSequence`
(``[namespace, world_seed, split, ...]``), so the task pools (``train``, ``test``), the render
styles of each domain and the teacher's pretraining corpus never share a stream: the pretraining
corpus is disjoint from every task split by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mad_distill.data.world.render import DOMAINS, check_domain, render
from mad_distill.data.world.scene import Scene, sample_scene

#: the data pools of the tasks, and the teacher's pretraining corpus
SPLITS: tuple[str, ...] = ("train", "test", "pretrain")

_NS_SCENE, _NS_STYLE, _NS_TASK = 1, 2, 3


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}; known: {list(SPLITS)}")
    return SPLITS.index(split)


def _check_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    return int(index)


def scene_rng(world_seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([_NS_SCENE, world_seed, _split_code(split), _check_index(index)])


def style_rng(world_seed: int, split: str, domain: str, index: int) -> np.random.Generator:
    d = DOMAINS.index(check_domain(domain))
    return np.random.default_rng(
        [_NS_STYLE, world_seed, _split_code(split), d, _check_index(index)]
    )


def task_rng(world_seed: int, split: str, task_code: int, index: int) -> np.random.Generator:
    return np.random.default_rng(
        [_NS_TASK, world_seed, _split_code(split), task_code, _check_index(index)]
    )


def generate_scene(world_seed: int, split: str, index: int) -> Scene:
    """The scene at ``index`` of a split (identical in every domain)."""
    return sample_scene(scene_rng(world_seed, split, index))


def generate_images(
    world_seed: int,
    split: str,
    domain: str,
    indices: Sequence[int],
    size: int = 64,
    scenes: Sequence[Scene] | None = None,
) -> np.ndarray:
    """``uint8 [len(indices), size, size, 3]`` images of the scenes at ``indices`` in ``domain``."""
    if scenes is None:
        scenes = [generate_scene(world_seed, split, int(i)) for i in indices]
    rngs = [style_rng(world_seed, split, domain, int(i)) for i in indices]
    return render(scenes, domain, rngs, size=size)
