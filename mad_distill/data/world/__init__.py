"""The embedded benchmark world: procedurally generated scenes, three VL tasks mirroring VQA v2,
SNLI-VE and VCR, two image domains, and a shipped pretrained CLIP teacher.

>>> from mad_distill.data.world import WorldDataModule
>>> dm = WorldDataModule("vqa", domain_train="flat", domain_test=["flat", "textured"],
...                      fraction=0.01, seed=0)  # doctest: +SKIP

Importing this package registers the teacher alias ``"world-clip"``
(``mad_distill.teachers.create_teacher("world-clip")``).
"""

from mad_distill.data.world.datamodule import (
    WorldBatch,
    WorldDataModule,
    WorldTaskDataset,
    world_vocabulary,
)
from mad_distill.data.world.generator import SPLITS, generate_images, generate_scene
from mad_distill.data.world.render import DOMAINS, render
from mad_distill.data.world.scene import COLOURS, SHAPES, SIZES, WorldObject, scene_caption
from mad_distill.data.world.tasks import (
    NUM_CANDIDATES,
    SNLI_LABELS,
    TASKS,
    VCR_MODES,
    VQA_ANSWERS,
    WorldInstance,
    make_instance,
    num_classes,
)
from mad_distill.data.world.teacher import (
    WORLD_CLIP_ALIAS,
    WORLD_CLIP_CHECKSUM,
    WORLD_CLIP_WEIGHTS,
    create_world_clip_teacher,
    load_world_clip,
    register_world_teacher,
    verify_weights,
)
from mad_distill.data.world.zero_shot import group_logits, zero_shot_accuracy

register_world_teacher()

__all__ = [
    "COLOURS",
    "DOMAINS",
    "NUM_CANDIDATES",
    "SHAPES",
    "SIZES",
    "SNLI_LABELS",
    "SPLITS",
    "TASKS",
    "VCR_MODES",
    "VQA_ANSWERS",
    "WORLD_CLIP_ALIAS",
    "WORLD_CLIP_CHECKSUM",
    "WORLD_CLIP_WEIGHTS",
    "WorldBatch",
    "WorldDataModule",
    "WorldInstance",
    "WorldObject",
    "WorldTaskDataset",
    "create_world_clip_teacher",
    "generate_images",
    "generate_scene",
    "group_logits",
    "load_world_clip",
    "make_instance",
    "num_classes",
    "register_world_teacher",
    "render",
    "scene_caption",
    "verify_weights",
    "world_vocabulary",
    "zero_shot_accuracy",
]
