"""Bad-input sweep: every bad input raises ValueError / TypeError / FileNotFoundError whose message
names the offending field, argument or file (config, teachers, data, cache, kernels, training
helpers)."""

from __future__ import annotations

import math

import pytest
import torch
from scale_helpers import TinyMAD, ToyData, mad_batches

from mad_distill.cache import (
    CacheError,
    TeacherCache,
    build_cache,
    preprocessing_record,
    verify_cache,
)
from mad_distill.config import MADConfig
from mad_distill.types import MADBatch, StudentTokens

SPEC = "open_clip:ViT-B-32@/weights/clip.pt"  # syntax only: configs do not load teachers
B3 = torch.bool


def _cfg(**kw):
    return lambda: MADConfig(teachers={"clip": SPEC}, **kw)


def _ops():
    from mad_distill import ops

    return ops


s_logits = torch.randn(2, 4, 5)
w2 = torch.ones(2)

# (id, call, exception, regex the message must match: the field / argument / file)
CASES = [
    # ---- config
    ("ratio_zero", _cfg(select=dict(ratio=0.0)), ValueError, r"select\.ratio"),
    ("unknown_source", _cfg(select=dict(source="magic")), ValueError, r"select\.source.*relevance"),
    ("negative_tau", _cfg(kl=dict(tau=-1.0)), ValueError, r"kl\.tau"),
    ("nan_tau", _cfg(kl=dict(tau=math.nan)), ValueError, r"kl\.tau"),
    ("unknown_weight_mode", _cfg(weight=dict(mode="x")), ValueError, r"weight\.mode.*gt_prob"),
    ("negative_gamma", _cfg(weight=dict(gamma=-1.0)), ValueError, r"weight\.gamma"),
    ("unknown_feat_loss", _cfg(feat=dict(loss="l3")), ValueError, r"feat\.loss.*cosine"),
    ("unknown_schedule", _cfg(feat=dict(schedule=dict(kind="step"))), ValueError, r"kind"),
    ("unknown_kernels", _cfg(kernels="cuda"), ValueError, r"kernels"),
    ("unknown_modality", _cfg(select=dict(modalities=["audio"])), ValueError, r"modalities"),
    (
        "unknown_config_field",
        lambda: MADConfig.from_dict({"teachers": {"clip": SPEC}, "bogus": 1}),
        ValueError,
        r"bogus",
    ),
    (
        "unknown_teacher_role",
        lambda: MADConfig(teachers={"image": SPEC}),
        ValueError,
        r"role 'image'.*clip",
    ),
    (
        "unknown_teacher_prefix",
        lambda: MADConfig(teachers={"clip": "zzz:abc"}),
        ValueError,
        r"teachers\.clip.*zzz",
    ),
    # ---- teachers
    (
        "missing_clip_weights",
        lambda: __import__("mad_distill.teachers", fromlist=["x"]).create_teacher(
            "open_clip:ViT-B-32@/nonexistent/clip.pt"
        ),
        FileNotFoundError,
        r"/nonexistent/clip\.pt",
    ),
    (
        "missing_hf_dir",
        lambda: __import__("mad_distill.teachers", fromlist=["x"]).create_teacher(
            "hf:/nonexistent/roberta"
        ),
        FileNotFoundError,
        r"/nonexistent/roberta",
    ),
    # ---- data containers and splits
    (
        "student_mask_shape",
        lambda: StudentTokens(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=B3), torch.zeros(2, 3)),
        ValueError,
        r"StudentTokens\.mask",
    ),
    (
        "student_mask_dtype",
        lambda: StudentTokens(torch.randn(2, 3, 4), torch.ones(2, 3), torch.zeros(2, 3)),
        TypeError,
        r"StudentTokens\.mask must be bool",
    ),
    (
        "batch_image_count",
        lambda: MADBatch(torch.randn(3, 3, 4, 4), ["a", "b"]),
        ValueError,
        r"MADBatch\.teacher_images",
    ),
    (
        "batch_labels_shape",
        lambda: MADBatch(None, ["a", "b"], labels=torch.tensor([1])),
        ValueError,
        r"MADBatch\.labels",
    ),
    ("batch_texts_type", lambda: MADBatch(None, "ab"), TypeError, r"MADBatch\.texts"),
    (
        "split_fraction",
        lambda: __import__("mad_distill.data.splits", fromlist=["x"]).low_shot_indices(100, 1.5, 0),
        ValueError,
        r"fraction",
    ),
    (
        "missing_vqa_file",
        lambda: __import__("mad_distill.data.vqa", fromlist=["x"]).VQADataset(
            "/nonexistent/questions.json", None, "/nonexistent/images"
        ),
        FileNotFoundError,
        r"/nonexistent/questions\.json",
    ),
    (
        "weight_labels_range",
        lambda: __import__("mad_distill.weighting", fromlist=["x"]).confidence_weights(
            torch.randn(2, 3), torch.tensor([0, 5])
        ),
        ValueError,
        r"labels",
    ),
    # ---- kernels / ops
    (
        "kl_index_out_of_range",
        lambda: _ops().token_kl(s_logits, s_logits, torch.tensor([[0, 4], [1, 2]]), w2, 2.0),
        ValueError,
        r"index.*N = 4",
    ),
    (
        "kl_infinite_tau",
        lambda: _ops().token_kl(s_logits, s_logits, torch.tensor([[0, 1], [1, 2]]), w2, math.inf),
        ValueError,
        r"tau",
    ),
    (
        "kl_float_index",
        lambda: _ops().token_kl(s_logits, s_logits, torch.tensor([[0.0, 1], [1, 2]]), w2, 2.0),
        TypeError,
        r"index must be int",
    ),
    (
        "select_nan_scores",
        lambda: __import__("mad_distill.selection", fromlist=["x"]).select_tokens(
            torch.tensor([[1.0, math.nan]]), torch.ones(1, 2, dtype=B3), k=1
        ),
        ValueError,
        r"scores",
    ),
    (
        "select_ratio",
        lambda: __import__("mad_distill.selection", fromlist=["x"]).select_tokens(
            torch.randn(2, 3), torch.ones(2, 3, dtype=B3), ratio=1.5
        ),
        ValueError,
        r"ratio",
    ),
    # ---- training helpers
    (
        "sampler_batch_size",
        lambda: __import__("mad_distill.resume", fromlist=["x"]).ResumableSampler(
            list(range(4)), batch_size=0
        ),
        ValueError,
        r"batch_size",
    ),
    (
        "cache_missing_dir",
        lambda: verify_cache("/nonexistent/cache"),
        FileNotFoundError,
        r"/nonexistent/cache",
    ),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_sweep_is_broad():
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids) >= 20


# ---- cache: need a real cache on disk
@pytest.fixture(scope="module")
def built(tiny_clip, word_tokenizer, tmp_path_factory):
    model = TinyMAD(MADConfig(teachers={"clip": tiny_clip}), word_tokenizer)
    rec = preprocessing_record(model)
    cache = build_cache(
        tmp_path_factory.mktemp("bad") / "c",
        model,
        mad_batches(ToyData(6), 3),
        dataset="toy",
        split="train",
        preprocessing=rec,
        shard_bytes=10_000,
    )
    return model, rec, cache


def test_cache_bad_inputs(built, tmp_path):
    model, rec, cache = built
    d = cache.directory
    kw = dict(dataset="toy", split="train", teachers=model, preprocessing=rec)
    with pytest.raises(CacheError, match=r"split: cache 'train', run 'test'"):
        TeacherCache(d, **{**kw, "split": "test"})
    with pytest.raises(CacheError, match=r"teachers.clip: cache '.*', run 'open_clip:other#0'"):
        TeacherCache(d, **{**kw, "teachers": {"clip": "open_clip:other#0"}})
    with pytest.raises(CacheError, match=r"preprocessing.extra"):
        TeacherCache(d, **{**kw, "preprocessing": preprocessing_record(model, extra={"v": 2})})
    with pytest.raises(ValueError, match="max_shards"):
        TeacherCache(d, **kw, max_shards=0)
    opened = TeacherCache(d, **kw)
    with pytest.raises(CacheError, match=r"'toy/99'"):
        opened.teacher_outputs(MADBatch(None, ["x"], keys=["toy/99"]), {"image"})
    with pytest.raises(TypeError, match="MADBatch"):
        opened.teacher_outputs({"keys": ["toy/0"]}, {"image"})
    with pytest.raises(ValueError, match="dtype"):
        build_cache(tmp_path / "x", model, [], dataset="toy", split="t", preprocessing=rec,
                    dtype="fp8")  # fmt: skip
    with pytest.raises(TypeError, match="preprocessing"):
        build_cache(tmp_path / "x", model, [], dataset="toy", split="t", preprocessing="v1")
    with pytest.raises(TypeError, match="extra must be JSON"):
        preprocessing_record(model, extra={"f": object()})
    # a corrupt index names the file
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "index.json").write_text("{not json")
    with pytest.raises(CacheError, match=r"broken/index\.json is not valid JSON"):
        verify_cache(bad)
