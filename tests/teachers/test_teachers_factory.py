"""Teacher specs, the registry, and the Teacher contract inside a student module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mad_distill.teachers import (
    Teacher,
    TeacherSpec,
    create_teacher,
    list_teacher_prefixes,
    parse_teacher_spec,
    register_teacher_alias,
    register_teacher_prefix,
)
from mad_distill.teachers import factory as factory_mod


@pytest.fixture
def clean_registry():
    prefixes, aliases = dict(factory_mod._PREFIXES), dict(factory_mod._ALIASES)
    yield
    factory_mod._PREFIXES.clear()
    factory_mod._PREFIXES.update(prefixes)
    factory_mod._ALIASES.clear()
    factory_mod._ALIASES.update(aliases)


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("open_clip:ViT-B-32@/w/model.pt", TeacherSpec("open_clip", "ViT-B-32", "/w/model.pt")),
        (
            "open_clip:ViT-B-32@laion2b_s34b_b79k",
            TeacherSpec("open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ),
        ("open_clip:local-dir:/models/clip", TeacherSpec("open_clip", "local-dir:/models/clip")),
        ("hf:/models/roberta-base", TeacherSpec("hf", "/models/roberta-base")),
        ("hf:roberta-base", TeacherSpec("hf", "roberta-base")),
        ("hf-mlm:/models/roberta", TeacherSpec("hf-mlm", "/models/roberta")),
    ],
)
def test_parse_valid(spec, expect):
    assert parse_teacher_spec(spec) == expect
    assert str(expect) == spec


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("timm:vit_base", r"unknown prefix 'timm:'.*open_clip:"),
        ("roberta-base", r"no '<prefix>:'.*hf:"),
        ("open_clip:ViT-B-32", r"open_clip:<model>@<weights"),
        ("open_clip:ViT-B-32@", r"open_clip:<model>@<weights"),
        ("open_clip:@/w.pt", r"open_clip:<model>@<weights"),
        ("open_clip:local-dir:/x@/w.pt", "takes no '@weights'"),
        ("hf:", "nothing after 'hf:'"),
        ("hf-mlm:  ", "nothing after 'hf-mlm:'"),
    ],
)
def test_parse_malformed(spec, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_teacher_spec(spec)
    assert repr(spec) in str(err.value)  # names the offending spec


def test_parse_type_error():
    with pytest.raises(TypeError, match="string"):
        parse_teacher_spec(42)


def test_parse_touches_no_file():
    # validation only: a missing path is create_teacher's business
    assert parse_teacher_spec("open_clip:ViT-B-32@/does/not/exist.pt").pretrained == (
        "/does/not/exist.pt"
    )


def test_unknown_open_clip_model_lists_close_matches(tmp_path):
    w = tmp_path / "w.pt"
    w.write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown open_clip model 'ViT-B-3'.*ViT-B-32"):
        create_teacher(f"open_clip:ViT-B-3@{w}")


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="/no/such/weights.pt"):
        create_teacher("open_clip:ViT-B-32@/no/such/weights.pt")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match=r"not_a_tag.*laion2b_s34b_b79k"):
        create_teacher("open_clip:ViT-B-32@not_a_tag")


def test_missing_local_dir():
    with pytest.raises(FileNotFoundError, match="/no/such/dir"):
        create_teacher("open_clip:local-dir:/no/such/dir")
    with pytest.raises(FileNotFoundError, match="/no/such/hf_dir"):
        create_teacher("hf:/no/such/hf_dir")


def test_wrong_checkpoint_is_a_clear_error(tiny_clip):
    from tests.teachers.conftest import TINY_CLIP_NARROW

    with pytest.raises(ValueError, match=r"does not fit open_clip model"):
        create_teacher(f"open_clip:{TINY_CLIP_NARROW}@{tiny_clip.pt}")


def test_teacher_instance_passes_through(clip_teacher):
    assert create_teacher(clip_teacher) is clip_teacher
    with pytest.raises(TypeError, match="no options"):
        create_teacher(clip_teacher, device="cpu")


def test_alias_to_spec_and_to_callable(tiny_clip, clip_teacher, clean_registry):
    register_teacher_alias("test-clip", f"open_clip:{tiny_clip.name}@{tiny_clip.pt}")
    assert parse_teacher_spec("test-clip").kind == "alias"
    teacher = create_teacher("test-clip")
    assert teacher.identity == clip_teacher.identity
    register_teacher_alias("test-callable", lambda: clip_teacher)
    assert create_teacher("test-callable") is clip_teacher
    register_teacher_alias("test-bad", lambda: nn.Linear(1, 1))
    with pytest.raises(TypeError, match="not a Teacher"):
        create_teacher("test-bad")
    with pytest.raises(ValueError, match="unknown prefix"):
        register_teacher_alias("test-broken", "nope:xyz")
    with pytest.raises(ValueError, match="without ':'"):
        register_teacher_alias("a:b", "hf:/x")
    # unknown names list the aliases too
    with pytest.raises(ValueError, match="test-clip"):
        parse_teacher_spec("not-registered")


def test_register_prefix(clean_registry, clip_teacher):
    register_teacher_prefix("mine", lambda spec, **kw: clip_teacher)
    assert "mine" in list_teacher_prefixes()
    assert create_teacher("mine:anything") is clip_teacher
    with pytest.raises(ValueError, match="no ':'"):
        register_teacher_prefix("a:b", lambda spec: clip_teacher)


class _Student(nn.Module):
    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.teacher = teacher


def test_teacher_never_in_student_state_dict(tiny_clip):
    teacher = create_teacher(f"open_clip:{tiny_clip.name}@{tiny_clip.pt}")
    student = _Student(teacher)
    sd = student.state_dict()
    assert set(sd) == {"head.weight", "head.bias"}
    assert teacher.state_dict() == {}
    # a student checkpoint loads back strictly and leaves the teacher's weights alone
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    sd = {k: torch.zeros_like(v) for k, v in sd.items()}
    sd["teacher.model.logit_scale"] = torch.tensor(123.0)  # stray teacher entry: ignored
    student.load_state_dict(sd, strict=True)
    assert torch.equal(student.head.weight, torch.zeros(2, 4))
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_parent_train_keeps_teacher_frozen_in_eval(clip_teacher):
    student = _Student(clip_teacher)
    student.train()
    assert student.head.training and not clip_teacher.training
    assert not any(m.training for m in clip_teacher.modules())
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]


def test_packaged_world_clip_alias_needs_no_import():
    """`create_teacher("world-clip")` works in a fresh process that never imported the world."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mad_distill.teachers import create_teacher, list_teacher_aliases\n"
        "assert 'world-clip' in list_teacher_aliases()\n"
        "assert 'mad_distill.data.world.teacher' not in sys.modules\n"
        "t = create_teacher('world-clip')\n"
        "print(type(t).__name__, t.embed_dim)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OpenCLIPTeacher")
