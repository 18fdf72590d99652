"""MADConfig: defaults, dict parts, round trips (Python, YAML via jsonargparse), every bad field."""

from __future__ import annotations

import pytest
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from mad_distill.config import (
    DEFAULT_RATIO,
    FeatConfig,
    KLConfig,
    MADConfig,
    ScheduleConfig,
    SelectConfig,
    WeightConfig,
)
from mad_distill.ops.feature_loss import FEATURE_LOSSES as OPS_FEATURE_LOSSES
from mad_distill.teachers.base import Teacher
from mad_distill.teachers.factory import TeacherSpec

CLIP = "open_clip:ViT-B-32@/weights/clip.pt"
TEXT = "hf:/models/roberta-base"


class _TinyTeacher(Teacher):
    def __init__(self, spec: str | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)
        if spec is not None:
            self.spec = spec
        self._freeze()

    def describe(self) -> str:
        return "tiny"


def test_defaults_and_dict_parts():
    cfg = MADConfig(
        teachers={"clip": CLIP, "text": TEXT},
        select=dict(source="attention", ratio=0.5),
        weight=dict(mode="entropy", gamma=2),
        feat=dict(loss="mse", weight=0.3, schedule=dict(kind="linear_warmup", warmup_steps=10)),
        kl=dict(tau=3, weight=0.0),
    )
    assert isinstance(cfg.select, SelectConfig) and cfg.select.ratio == 0.5
    assert isinstance(cfg.weight, WeightConfig) and cfg.weight.gamma == 2.0
    assert isinstance(cfg.feat.schedule, ScheduleConfig) and cfg.feat.schedule.warmup_steps == 10
    assert isinstance(cfg.kl, KLConfig) and cfg.kl.tau == 3.0 and isinstance(cfg.kl.tau, float)
    default = MADConfig(teachers={"clip": CLIP})
    assert default.select.source == "relevance" and default.select.modalities == ("image", "text")
    assert default.select.ratio is None and default.select.effective_ratio == DEFAULT_RATIO == 0.3
    assert (default.weight.mode, default.weight.gamma) == ("gt_prob", 1.0)
    assert (default.feat.loss, default.feat.weight, default.feat.projector) == (
        "cosine",
        1,
        "linear",
    )
    assert (default.kl.tau, default.kl.weight) == (2.0, 0.5)
    assert default.kernels == "auto"


def test_k_alone_and_list_modalities():
    cfg = MADConfig(teachers={"clip": CLIP}, select=dict(k=8, modalities=["image"]))
    assert cfg.select.k == 8 and cfg.select.effective_ratio is None
    assert cfg.select.modalities == ("image",)


def test_feature_losses_agree_with_ops():
    assert FeatConfig().loss in OPS_FEATURE_LOSSES
    from mad_distill.config import FEATURE_LOSSES

    assert set(FEATURE_LOSSES) == set(OPS_FEATURE_LOSSES)


def test_dict_round_trip():
    cfg = MADConfig(
        teachers={"clip": CLIP, "text": TEXT},
        select=dict(source="discrepancy", k=4, modalities=("text", "image")),
        kl=dict(schedule=dict(kind="cosine", warmup_steps=5, total_steps=50, final_factor=0.1)),
        kernels="reference",
    )
    data = cfg.to_dict()
    assert data["select"]["modalities"] == ["text", "image"]  # YAML-friendly lists
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert MADConfig.from_dict(yaml.safe_load(yaml.safe_dump(data))) == cfg
    assert MADConfig.from_dict(MADConfig(teachers={"clip": CLIP}).to_dict()) == MADConfig(
        teachers={"clip": CLIP}
    )


def test_teacher_objects_and_serialisation():
    tiny, named = _TinyTeacher(), _TinyTeacher(spec=CLIP)
    assert MADConfig(teachers={"clip": tiny}).teachers["clip"] is tiny
    assert MADConfig(teachers={"clip": named}).to_dict(serializable=True)["teachers"] == {
        "clip": CLIP
    }
    spec = TeacherSpec("hf", "/models/roberta-base")
    cfg = MADConfig(teachers={"clip": CLIP, "text": spec})
    assert cfg.to_dict(serializable=True)["teachers"]["text"] == "hf:/models/roberta-base"
    with pytest.raises(ValueError, match=r"teachers\.clip is a _TinyTeacher without a 'spec'"):
        MADConfig(teachers={"clip": tiny}).to_dict(serializable=True)


def test_validate_after_mutation():
    cfg = MADConfig(teachers={"clip": CLIP})
    cfg.kl.tau = -1.0
    with pytest.raises(ValueError, match=r"kl\.tau"):
        cfg.validate()


def test_jsonargparse_builds_from_yaml(tmp_path):
    class Model:
        def __init__(self, mad: MADConfig) -> None:
            self.mad = mad

    text = f"""
model:
  mad:
    teachers: {{clip: "{CLIP}", text: "{TEXT}"}}
    select: {{source: attention, k: 8, modalities: [text]}}
    weight: {{mode: entropy}}
    kl: {{tau: 3.0, schedule: {{kind: cosine, warmup_steps: 2, total_steps: 10}}}}
    kernels: reference
"""
    path = tmp_path / "mad.yaml"
    path.write_text(text)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_class_arguments(Model, "model")
    built = parser.instantiate(parser.parse_args(["--config", str(path)])).model.mad
    expected = MADConfig(
        teachers={"clip": CLIP, "text": TEXT},
        select=dict(source="attention", k=8, modalities=["text"]),
        weight=dict(mode="entropy"),
        kl=dict(tau=3.0, schedule=dict(kind="cosine", warmup_steps=2, total_steps=10)),
        kernels="reference",
    )
    assert built == expected
    # and the dict form that checkpoints store parses back through the same parser
    path.write_text(yaml.safe_dump({"model": {"mad": expected.to_dict()}}))
    again = parser.instantiate(parser.parse_args(["--config", str(path)])).model.mad
    assert again == expected
    # a bad value in YAML fails with the field path
    path.write_text(text.replace("tau: 3.0", "tau: -3.0"))
    with pytest.raises(ValueError, match=r"kl\.tau must be a finite number > 0"):
        parser.instantiate(parser.parse_args(["--config", str(path)]))


BAD = [
    # (kwargs, exception, message pattern naming the field and allowed values)
    (
        dict(select=dict(source="saliency")),
        ValueError,
        r"select\.source must be one of \('relevance'",
    ),
    (dict(select=dict(ratio=0.0)), ValueError, r"select\.ratio must be in \(0, 1\]"),
    (dict(select=dict(ratio=1.01)), ValueError, r"select\.ratio must be in \(0, 1\]"),
    (dict(select=dict(ratio=float("nan"))), ValueError, r"select\.ratio must not be NaN"),
    (dict(select=dict(ratio="0.3")), TypeError, r"select\.ratio must be a number"),
    (dict(select=dict(k=0)), ValueError, r"select\.k must be >= 1"),
    (dict(select=dict(k=2.5)), TypeError, r"select\.k must be an int"),
    (dict(select=dict(k=4, ratio=0.3)), ValueError, r"select\.k and select\.ratio are both set"),
    (dict(select=dict(modalities=["audio"])), ValueError, r"select\.modalities must be one of"),
    (dict(select=dict(modalities=[])), ValueError, r"select\.modalities must be a non-empty"),
    (dict(select=dict(modalities="image")), TypeError, r"select\.modalities must be a list"),
    (dict(select=dict(topk=3)), ValueError, r"select has unknown field\(s\) \['topk'\]"),
    (dict(select=3), TypeError, r"select must be a SelectConfig or a dict"),
    (dict(weight=dict(mode="confidence")), ValueError, r"weight\.mode must be one of \('gt_prob'"),
    (dict(weight=dict(gamma=-0.5)), ValueError, r"weight\.gamma must be a finite number >= 0"),
    (dict(feat=dict(loss="l1")), ValueError, r"feat\.loss must be one of \('cosine', 'mse'"),
    (dict(feat=dict(weight=-1)), ValueError, r"feat\.weight must be a finite number >= 0"),
    (dict(feat=dict(projector="conv")), ValueError, r"feat\.projector must be one of"),
    (dict(kl=dict(tau=0)), ValueError, r"kl\.tau must be a finite number > 0"),
    (dict(kl=dict(tau=-2.0)), ValueError, r"kl\.tau must be a finite number > 0"),
    (dict(kl=dict(tau=float("nan"))), ValueError, r"kl\.tau must not be NaN"),
    (dict(kl=dict(tau=float("inf"))), ValueError, r"kl\.tau must be a finite number > 0"),
    (dict(kl=dict(weight=-0.1)), ValueError, r"kl\.weight must be a finite number >= 0"),
    (dict(kl=dict(token_level="yes")), TypeError, r"kl\.token_level must be a bool"),
    (
        dict(kl=dict(schedule=dict(kind="step"))),
        ValueError,
        r"kl\.schedule\.kind must be one of \('constant', 'linear_warmup', 'cosine'\)",
    ),
    (
        dict(feat=dict(schedule=dict(kind="cosine", warmup_steps=10, total_steps=10))),
        ValueError,
        r"feat\.schedule\.warmup_steps \(10\) must be < feat\.schedule\.total_steps",
    ),
    (
        dict(feat=dict(schedule=dict(kind="linear_warmup", warmup_steps=-1))),
        ValueError,
        r"feat\.schedule\.warmup_steps must be >= 0",
    ),
    (
        dict(feat=dict(schedule=dict(warmup_steps=5))),
        ValueError,
        r"feat\.schedule\.warmup_steps must be 0 for kind='constant'",
    ),
    (
        dict(kl=dict(schedule=dict(kind="cosine", total_steps=0))),
        ValueError,
        r"kl\.schedule\.total_steps must be >= 1",
    ),
    (
        dict(kl=dict(schedule=dict(kind="cosine", final_factor=1.5))),
        ValueError,
        r"kl\.schedule\.final_factor must be in \[0, 1\]",
    ),
    (dict(kernels="cuda"), ValueError, r"kernels must be one of \('auto', 'triton', 'reference'\)"),
    (
        dict(teachers={"vision": CLIP}),
        ValueError,
        r"unknown role 'vision'; allowed roles: \('clip'",
    ),
    (dict(teachers={"clip": "clip:ViT-B-32"}), ValueError, r"teachers\.clip: .*unknown prefix"),
    (dict(teachers={"clip": "open_clip:ViT-B-32"}), ValueError, r"teachers\.clip: .*@<weights"),
    (dict(teachers={"clip": 3}), TypeError, r"teachers\.clip must be a teacher spec string"),
    (dict(teachers={"clip": None}), TypeError, r"teachers\.clip must be a teacher spec string"),
    (dict(teachers={}), ValueError, r"teachers must name at least one teacher"),
    (dict(teachers=[CLIP]), TypeError, r"teachers must be a dict mapping roles"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), BAD)
def test_bad_fields(kwargs, exc, match):
    kwargs = {"teachers": {"clip": CLIP}, **kwargs}
    with pytest.raises(exc, match=match):
        MADConfig(**kwargs)


def test_missing_clip_teacher_names_what_needs_it():
    with pytest.raises(ValueError, match=r"no 'clip' teacher.*'image'.*relevance.*gt_prob"):
        MADConfig(teachers={"text": TEXT})
    text_only = MADConfig(
        teachers={"text": TEXT},
        select=dict(source="attention", modalities=["text"]),
        weight=dict(mode="uniform"),
        kl=dict(instance_level=False),
    )
    assert text_only.teacher_roles == ("text",)


def test_standalone_parts_use_their_own_names():
    with pytest.raises(ValueError, match=r"^schedule\.kind"):
        ScheduleConfig(kind="exp")
    with pytest.raises(ValueError, match=r"^select\.ratio"):
        SelectConfig(ratio=2.0)
    # a part passed as an instance is re-checked under its place in the config
    part = ScheduleConfig(kind="cosine", total_steps=10)
    part.warmup_steps = 20
    with pytest.raises(ValueError, match=r"kl\.schedule\.warmup_steps"):
        MADConfig(teachers={"clip": CLIP}, kl=KLConfig(schedule=part))


def test_from_dict_errors():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lambda'\]"):
        MADConfig.from_dict({"teachers": {"clip": CLIP}, "lambda": 1})
    with pytest.raises(ValueError, match="teachers is required"):
        MADConfig.from_dict({"select": {}})
    with pytest.raises(TypeError, match="needs a dict"):
        MADConfig.from_dict([("teachers", {})])
