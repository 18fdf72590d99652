"""The shipped world CLIP teacher: checksum, loading through create_teacher, zero-shot skill,
and deterministic pretraining."""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
import torch

from mad_distill.data.world import (
    TASKS,
    WORLD_CLIP_CHECKSUM,
    WORLD_CLIP_WEIGHTS,
    WorldDataModule,
    load_world_clip,
    verify_weights,
)
from mad_distill.data.world.zero_shot import chance_accuracy, teacher_class_logits
from mad_distill.teachers import OpenCLIPTeacher, create_teacher


@pytest.fixture(scope="module")
def teacher():
    return create_teacher("world-clip")


def test_shipped_weights_match_their_checksum():
    record = json.loads(WORLD_CLIP_CHECKSUM.read_text())
    assert verify_weights() == record["sha256"]
    assert record["file"] == WORLD_CLIP_WEIGHTS.name
    assert WORLD_CLIP_WEIGHTS.stat().st_size < 20 * 2**20


def test_corrupt_or_mismatched_copy_is_refused(tmp_path):
    bad = tmp_path / "world_clip.safetensors"
    shutil.copy(WORLD_CLIP_WEIGHTS, bad)
    shutil.copy(WORLD_CLIP_CHECKSUM, tmp_path / "world_clip.json")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"world_clip\.safetensors are corrupt"):
        verify_weights(bad)
    with pytest.raises(ValueError, match="corrupt"):
        load_world_clip(bad)
    with pytest.raises(ValueError, match="corrupt"):
        create_teacher("world-clip", weights=bad)
    (tmp_path / "world_clip.json").write_text("{}")
    with pytest.raises(ValueError, match="malformed"):
        verify_weights(bad)
    (tmp_path / "world_clip.json").unlink()
    with pytest.raises(FileNotFoundError, match="checksum file"):
        verify_weights(bad)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        verify_weights(tmp_path / "missing.safetensors")


def test_create_teacher_world_clip_is_a_frozen_open_clip_teacher(teacher):
    assert isinstance(teacher, OpenCLIPTeacher)
    assert teacher.describe() == "open_clip:MAD-World-CLIP"
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("task", TASKS)
def test_shipped_teacher_beats_chance_zero_shot(teacher, task):
    """A real test of the shipped weights, through the MADBatch path MAD uses."""
    for domain in ("flat", "textured"):
        dm = WorldDataModule(
            task,
            "flat",
            domain,
            fraction=1.0,
            pool_size=10,
            test_size=96,
            val_size=0,
            batch_size=48,
        )
        dm.setup("test")
        correct = 0
        for batch in dm.test_dataloader()[0]:
            logits = teacher_class_logits(teacher, batch.mad, dm.num_classes)
            pred = logits.argmax(-1)
            if task == "vqa":  # VQA accuracy: the soft score of the predicted answer
                correct += float(batch.answer_scores.gather(1, pred[:, None]).sum())
            else:
                correct += int((pred == batch.labels).sum())
        acc = 100.0 * correct / 96
        assert acc > chance_accuracy(task) + 8, (task, domain, acc)


def test_pretraining_is_deterministic_and_writes_a_checksum(tmp_path):
    from mad_distill.data.world.pretrain import pretrain_teacher

    kw = dict(steps=2, batch_size=8, warmup=1, log_every=0, threads=1)
    a = pretrain_teacher(tmp_path / "a.safetensors", seed=5, **kw)
    b = pretrain_teacher(tmp_path / "b.safetensors", seed=5, **kw)
    c = pretrain_teacher(tmp_path / "c.safetensors", seed=6, **kw)
    assert a["sha256"] == b["sha256"] != c["sha256"]
    assert verify_weights(tmp_path / "a.safetensors") == a["sha256"]
    model, _, tokenizer = load_world_clip(tmp_path / "a.safetensors")
    assert model.encode_text(tokenizer(["a red circle."])).shape == (1, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.json",
        "a.safetensors",
        "b.json",
        "b.safetensors",
        "c.json",
        "c.safetensors",
    ]


def test_pretraining_continues_from_checked_weights(tmp_path):
    """``init``: a warm restart from a teacher file; the data stream resumes after its steps."""
    from safetensors.torch import load_file

    from mad_distill.data.world.pretrain import pretrain_batch, pretrain_teacher

    kw = dict(batch_size=8, warmup=1, log_every=0, threads=1, precision="fp32")
    base = tmp_path / "base.safetensors"
    pretrain_teacher(base, steps=2, seed=5, **kw)
    a = pretrain_teacher(tmp_path / "a.safetensors", steps=1, seed=5, init=base, lr=0.0, **kw)
    # lr 0: the continued weights are the init's (the init was really loaded, not re-drawn)
    w0, w1 = load_file(str(base)), load_file(str(tmp_path / "a.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert a["args"]["step_offset"] == 2 and a["args"]["total_steps"] == 3
    b = pretrain_teacher(tmp_path / "b.safetensors", steps=1, seed=5, init=base, **kw)
    assert b["args"]["init"] == "base.safetensors" and b["sha256"] != a["sha256"]
    # a continued file's recorded total is where the next continuation starts
    c = pretrain_teacher(
        tmp_path / "c.safetensors", steps=1, seed=5, init=tmp_path / "b.safetensors", **kw
    )
    assert c["args"]["step_offset"] == 3 and c["args"]["total_steps"] == 4
    # the stream after the init's steps is new data
    assert pretrain_batch(5, 2, 8)[1] != pretrain_batch(5, 0, 8)[1]
    # a corrupt init is refused by name
    bad = tmp_path / "bad.safetensors"
    shutil.copy(base, bad)
    shutil.copy(tmp_path / "base.json", tmp_path / "bad.json")
    with open(bad, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="bad.safetensors"):
        pretrain_teacher(tmp_path / "x.safetensors", steps=1, init=bad, **kw)
    with pytest.raises(ValueError, match="step_offset"):
        pretrain_teacher(tmp_path / "x.safetensors", steps=1, step_offset=-1, **kw)


def test_pretraining_bad_arguments(tmp_path):
    from mad_distill.data.world.pretrain import build_parser, pretrain_teacher

    with pytest.raises(ValueError, match="steps"):
        pretrain_teacher(tmp_path / "x.safetensors", steps=0)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        pretrain_teacher(tmp_path / "x.pt", steps=1)
    with pytest.raises(ValueError, match="precision"):
        pretrain_teacher(tmp_path / "x.safetensors", steps=1, precision="int8")
    args = build_parser().parse_args(["--out", "w.safetensors", "--steps", "3"])
    assert args.steps == 3 and args.threads == 2


def test_pretrain_defaults_rebuild_the_shipped_teacher():
    """`mad-distill pretrain-teacher --out F` (the README's command) uses the shipped run's args."""
    from mad_distill.data.world.pretrain import build_parser, pretrain_teacher

    shipped = json.loads(WORLD_CLIP_CHECKSUM.read_text())["args"]
    cli = vars(build_parser().parse_args(["--out", "w.safetensors"]))
    defaults = inspect.signature(pretrain_teacher).parameters
    for name, value in shipped.items():
        assert defaults[name].default == value, name
        if name in cli:
            assert cli[name] == value, name


def test_zero_shot_accuracy_function_reports_per_type(teacher):
    from mad_distill.data.world.zero_shot import zero_shot_accuracy

    out = zero_shot_accuracy(teacher.model, teacher.tokenizer, "vcr", "flat", n=40)
    assert {"accuracy", "qa2r", "q2ar"} <= set(out)
    assert out["q2ar"] <= min(out["accuracy"], out["qa2r"])
    assert any(k.startswith("type/") for k in out)
    with pytest.raises(ValueError, match="n must be"):
        zero_shot_accuracy(teacher.model, teacher.tokenizer, "vcr", "flat", n=0)
    snli = zero_shot_accuracy(teacher.model, teacher.tokenizer, "snli_ve", "flat", n=40)
    # "holds" is a two-way judgement: every item counts, right or wrong (multiples of 2.5 %)
    assert 0 <= snli["holds"] <= 100 and (snli["holds"] / 2.5) == round(snli["holds"] / 2.5)
    assert "holds" not in out
    # ... and per statement type, whose item-weighted mean is the overall "holds"
    from collections import Counter

    from mad_distill.data.world.generator import generate_scene, task_rng
    from mad_distill.data.world.tasks import _TASK_CODE, make_instance

    code = _TASK_CODE["snli_ve"]
    counts = Counter(
        make_instance("snli_ve", generate_scene(0, "test", i), task_rng(0, "test", code, i)).qtype
        for i in range(40)
    )
    assert {k for k in snli if k.startswith("holds/")} == {f"holds/{q}" for q in counts}
    mean = sum(snli[f"holds/{q}"] * n for q, n in counts.items()) / 40
    assert mean == pytest.approx(snli["holds"])
    torch.manual_seed(0)


def test_zero_shot_on_views_of_the_images(teacher):
    """``views`` changes what the teacher sees and nothing else; AugMix views are seeded."""
    from mad_distill.data.world.zero_shot import augmented_views, zero_shot_accuracy

    args = (teacher.model, teacher.tokenizer, "snli_ve", "flat")
    plain = zero_shot_accuracy(*args, n=40, split="train")
    assert zero_shot_accuracy(*args, n=40, split="train", views=lambda raw: raw) == plain
    seen = []

    def blank(raw):
        seen.append((raw.shape, raw.dtype))
        return np.zeros_like(raw)

    blanked = zero_shot_accuracy(*args, n=40, split="train", views=blank, batch_size=16)
    assert seen == [((16, 64, 64, 3), np.uint8)] * 2 + [((8, 64, 64, 3), np.uint8)]
    assert blanked != plain  # one image for every item: the text alone decides
    torch.manual_seed(3)
    a = zero_shot_accuracy(*args, n=40, split="train", views=augmented_views("augmix"))
    torch.manual_seed(3)
    assert zero_shot_accuracy(*args, n=40, split="train", views=augmented_views("augmix")) == a
    with pytest.raises(ValueError, match="unknown augmentation 'augmax'"):
        augmented_views("augmax")
    torch.manual_seed(0)


def test_zero_shot_command_prints_and_writes_the_table(tmp_path, capsys):
    from mad_distill import cli

    out = tmp_path / "zs.json"
    assert cli.main(["zero-shot", "--n", "8", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| vqa | VQA acc |" in table and "| vcr | Q→AR |" in table
    assert "| snli_ve | holds (E∪N vs C) |" in table
    results = json.loads(out.read_text())
    assert sorted(results) == ["snli_ve", "vcr", "vqa"]
    assert all(sorted(results[t]) == ["flat", "textured"] for t in results)
    assert 0.0 <= results["vqa"]["flat"]["accuracy"] <= 100.0
    # the teacher on AugMix views of training items: seeded, so the same twice
    argv = ["zero-shot", "--n", "8", "--split", "train", "--augment", "augmix", "--seed", "1"]
    assert cli.main(argv + ["--json", str(out)]) == 0
    first = json.loads(out.read_text())
    assert cli.main(argv + ["--json", str(out)]) == 0
    assert json.loads(out.read_text()) == first
    capsys.readouterr()
