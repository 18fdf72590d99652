"""VL pretraining of the built-in student (ITM + MLM): checkpoint files, loading, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mad_distill.data.world.pretrain import pretrain_batch
from mad_distill.data.world.student_pretrain import (
    _itm_texts,
    _mask_words,
    load_pretrained_student,
    pretrain_student,
)
from mad_distill.students import BuiltinVLStudent
from mad_distill.students.tokenizer import WordTokenizer

TINY = dict(steps=2, batch_size=8, dim=16, depth=1, heads=2, warmup=1, log_every=0)


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "tiny_vl.safetensors"
    summary = pretrain_student(path, **TINY)
    return path, summary


def test_checkpoint_round_trip(tiny_student):
    path, summary = tiny_student
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == summary["sha256"] and record["file"] == path.name
    state, config, tok = load_pretrained_student(path)
    assert config["dim"] == 16 and config["depth"] == 1 and config["patch_size"] == 8
    assert isinstance(tok, WordTokenizer) and tok.vocab == record["vocab"]
    # the task head is not part of a task-agnostic checkpoint; everything else is
    assert not any(k.startswith("head.") for k in state)
    assert "patch_embed.weight" in state and "pooler.0.weight" in state
    assert all(v.dtype == torch.float32 for v in state.values())
    # the vocabulary covers the pretraining captions (no [UNK] words)
    _, caps, _, _ = pretrain_batch(1, 0, 16, size=24, domains=("flat",))
    ids = tok(caps)["input_ids"]
    assert not (ids == tok.unk_id).any()


def test_pretraining_is_deterministic(tiny_student, tmp_path):
    path, summary = tiny_student
    again = pretrain_student(tmp_path / "again.safetensors", **TINY)
    assert again["sha256"] == summary["sha256"]
    assert again["final"] == summary["final"]


def test_render_workers_do_not_change_the_weights(tiny_student, tmp_path):
    """Batches rendered ahead by loader workers are the in-loop stream, and the loader leaves
    the global (dropout) RNG alone: same tensors, bit for bit."""
    from safetensors.torch import load_file

    path, summary = tiny_student
    ahead = pretrain_student(tmp_path / "ahead.safetensors", workers=2, **TINY)
    ref, got = load_file(str(path)), load_file(str(tmp_path / "ahead.safetensors"))
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert ahead["final"] == summary["final"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pretraining_on_cuda(tmp_path):
    summary = pretrain_student(tmp_path / "cuda.safetensors", device="cuda", workers=2, **TINY)
    state, config, _ = load_pretrained_student(tmp_path / "cuda.safetensors")
    assert summary["args"]["device"] == "cuda" and config["dim"] == 16
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in state.values())


def test_corrupt_or_missing_checkpoint_is_named(tiny_student, tmp_path):
    path, _ = tiny_student
    bad = tmp_path / "bad.safetensors"
    shutil.copy(path, bad)
    shutil.copy(path.with_suffix(".json"), tmp_path / "bad.json")
    data = bytearray(bad.read_bytes())
    data[-3] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad.safetensors.*corrupt"):
        load_pretrained_student(bad)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_pretrained_student(tmp_path / "nope.safetensors")
    # a teacher checksum record (no config / vocab) is not a student record
    shutil.copy(path, tmp_path / "rec.safetensors")
    record = json.loads(path.with_suffix(".json").read_text())
    del record["vocab"]
    (tmp_path / "rec.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="vocab"):
        load_pretrained_student(tmp_path / "rec.safetensors")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 2}, "batch_size"),
        ({"mlm_prob": 1.0}, "mlm_prob"),
        ({"domains": ("sketch",)}, "domains"),
        ({"domains": ()}, "domains"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        pretrain_student(tmp_path / "x.safetensors", **{**TINY, **kw})
    with pytest.raises(ValueError, match="safetensors"):
        pretrain_student(tmp_path / "x.pt", **TINY)


def test_pretrain_batch_draws_only_the_given_domains():
    a = pretrain_batch(3, 0, 8, size=24, domains=("flat",))
    b = pretrain_batch(3, 0, 8, size=24, domains=("flat",))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ValueError, match="domains"):
        pretrain_batch(3, 0, 8, size=24, domains=("sketch",))


def test_itm_texts_and_word_masking():
    rng = np.random.default_rng(0)
    caps = [f"a red cube number {i}" for i in range(64)]
    foils = [f"a blue cube number {i}" for i in range(64)]
    valid = np.ones(64, bool)
    texts, match = _itm_texts(caps, foils, valid, rng, foil_frac=0.5)
    assert len(texts) == 64 and match.dtype == torch.long
    for t, m, c in zip(texts, match.tolist(), caps):
        assert (t == c) == bool(m)
    assert 16 <= int(match.sum()) <= 48  # about half are true pairs
    _, match0 = _itm_texts(caps, foils, valid, np.random.default_rng(0), foil_frac=0.0)
    texts0, _ = _itm_texts(caps, foils, valid, np.random.default_rng(0), foil_frac=0.0)
    assert not any(t.startswith("a blue") for t in texts0)  # no foils
    tok = WordTokenizer.build(caps + foils)
    enc = tok(caps)
    gen = torch.Generator().manual_seed(0)
    ids, target = _mask_words(enc["input_ids"], enc["word_ids"], tok, 0.15, gen)
    words = enc["word_ids"] >= 0
    picked = target != -100
    assert (picked <= words).all() and picked.any(1).all()  # words only, >= 1 per row
    assert (target[picked] == enc["input_ids"][picked]).all()
    assert (ids[~picked] == enc["input_ids"][~picked]).all()


def test_shipped_student_matches_its_record():
    from mad_distill.data.world.student_pretrain import WORLD_STUDENT_WEIGHTS
    from mad_distill.data.world.teacher import verify_weights

    record = json.loads(WORLD_STUDENT_WEIGHTS.with_suffix(".json").read_text())
    assert verify_weights(WORLD_STUDENT_WEIGHTS) == record["sha256"]
    assert record["file"] == WORLD_STUDENT_WEIGHTS.name
    assert WORLD_STUDENT_WEIGHTS.stat().st_size < 2**20
    state, config, tok = load_pretrained_student()
    assert config == {k: record["config"][k] for k in config}
    assert record["args"]["domains"] == ["flat"]  # narrower than the teacher's corpus
    keys = BuiltinVLStudent(len(tok), **config).state_dict()
    assert set(state) == {k for k in keys if not k.startswith("head.")}
