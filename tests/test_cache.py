"""Teacher-feature cache: layout, checksums, keys, crash safety, equality with live teachers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from scale_helpers import CANDIDATES, TinyMAD, ToyData, collate, mad_batches, trainer
from torch.utils.data import DataLoader

from mad_distill.cache import (
    INDEX_NAME,
    CacheError,
    TeacherCache,
    build_cache,
    main,
    preprocessing_record,
    verify_cache,
)
from mad_distill.config import MADConfig
from mad_distill.types import MADBatch

DATA = ToyData(12)


def _cfg(clip, text=None, **kw):
    teachers = {"clip": clip} if text is None else {"clip": clip, "text": text}
    return MADConfig(teachers=teachers, **kw)


@pytest.fixture(scope="module")
def mlm_model(tiny_clip, tiny_mlm_spec, word_tokenizer):
    """Both teachers (CLIP + MLM text), every output the cache can hold is needed."""
    return TinyMAD(_cfg(tiny_clip, tiny_mlm_spec, select=dict(source="relevance")), word_tokenizer)


def _record(model):
    return preprocessing_record(model, extra={"toy": 1})


def _build(tmp_path, model, dtype="fp16", **kw):
    return build_cache(
        tmp_path / f"cache-{dtype}",
        model,
        mad_batches(DATA, 5),  # batches of 5, 5, 2: other paddings than training's batches of 4
        dataset="toy",
        split="train",
        preprocessing=_record(model),
        dtype=dtype,
        **kw,
    )


def _open(path, model, **kw):
    args = dict(dataset="toy", split="train", teachers=model, preprocessing=_record(model))
    args.update(kw)
    return TeacherCache(path, **args)


def test_layout_index_and_checksums(tmp_path, mlm_model):
    cache = _build(tmp_path, mlm_model, shard_bytes=20_000)  # several shards
    index = json.loads((cache.directory / INDEX_NAME).read_text())
    assert index["rows"] == len(cache) == 12
    assert len(index["shards"]) > 1
    assert set(index["outputs"]) == {"image", "clip_text", "text", "zero_shot"}
    assert index["teachers"] == mlm_model.mad_teacher_identities
    assert index["dtype"] == "fp16"
    from safetensors.torch import load_file

    first = load_file(str(cache.directory / index["shards"][0]["file"]))
    assert first["image.tokens"].dtype == torch.float16  # bulk features in the storage dtype
    assert first["image.pooled"].dtype == torch.float32  # per-instance values in fp32
    assert first["zero_shot"].dtype == torch.float32
    assert first["text.mlm_logits"].dtype == torch.float16
    # ragged text rows: concatenated with offsets, each row up to its last valid token
    off = first["clip_text.tokens@offsets"]
    assert off[0] == 0 and off[-1] == first["clip_text.tokens"].shape[0]
    assert verify_cache(cache.directory)["rows"] == 12
    assert not list(cache.directory.glob(".*tmp"))  # no temporary files left


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_lookup_equals_live_teachers(tmp_path, mlm_model, dtype):
    cache = _build(tmp_path, mlm_model, dtype=dtype)
    tol = {"fp32": 1e-6, "fp16": 2e-3, "bf16": 1.6e-2}[dtype]
    for batch in mad_batches(DATA, 4):
        live = mlm_model.mad_teacher_outputs(batch, frozenset(cache.outputs))
        got = cache.teacher_outputs(batch, cache.outputs)
        for name in ("image", "clip_text", "text"):
            a, b = getattr(got, name), getattr(live, name)
            for field in ("tokens", "pooled", "tokens_joint", "attention", "mlm_logits"):
                x, y = getattr(a, field, None), getattr(b, field, None)
                if y is None:
                    assert x is None
                    continue
                assert x.dtype == torch.float32
                if name != "image" and field != "pooled":
                    m = b.mask  # compare valid positions only (padding is not stored)
                    assert torch.equal(a.mask, m) and torch.equal(a.word_ids[m], b.word_ids[m])
                    x, y = x[m], y[m]
                scale = y.abs().max().clamp(min=1)
                torch.testing.assert_close(x / scale, y.float() / scale, rtol=0, atol=tol)
        torch.testing.assert_close(got.zero_shot, live.zero_shot, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_shuffled_batch_across_shards_equals_row_by_row(tmp_path, mlm_model, dtype):
    """A batch's rows are gathered per shard in one indexing per field: a shuffled batch that
    spans several shards gives, row for row, what one-row lookups give."""
    from torch.utils.data import Subset

    cache = _build(tmp_path, mlm_model, dtype=dtype, shard_bytes=20_000)
    assert len(cache.index["shards"]) > 2
    perm = torch.randperm(len(DATA), generator=torch.Generator().manual_seed(0)).tolist()
    (whole,) = mad_batches(Subset(DATA, perm), len(DATA))
    singles = mad_batches(Subset(DATA, perm), 1)
    got = cache.teacher_outputs(whole, cache.outputs)
    one = [cache.teacher_outputs(b, cache.outputs) for b in singles]
    for name in ("image", "clip_text", "text"):
        for field in ("tokens", "pooled", "tokens_joint", "attention", "mlm_logits", "mask",
                      "word_ids"):  # fmt: skip
            x = getattr(getattr(got, name), field, None)
            if x is None:
                continue
            for i, o in enumerate(one):
                y = getattr(getattr(o, name), field)
                if x.dim() > 1 and name != "image" and field != "pooled":
                    # ragged: the batch pads each row to the batch's longest, a single row
                    # to itself; past its own length the batch holds the fill value
                    n = y.shape[1]
                    assert torch.equal(x[i, :n], y[0]), (name, field, i)
                    fill = {"mask": False, "word_ids": -1}.get(field, 0)
                    assert (x[i, n:] == fill).all(), (name, field, i)
                else:
                    assert torch.equal(x[i], y[0]), (name, field, i)
    for i, o in enumerate(one):
        assert torch.equal(got.zero_shot[i], o.zero_shot[0])


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_training_with_cache_equals_training_without(
    tmp_path, tiny_clip, tiny_mlm_spec, word_tokenizer, dtype
):
    """Same losses and parameters after 3 SGD steps; fp32 storage to float rounding."""
    cfg = _cfg(tiny_clip, tiny_mlm_spec, select=dict(source="attention"))
    live = TinyMAD(cfg, word_tokenizer, sgd=True, lr=0.1)
    cached = TinyMAD(cfg, word_tokenizer, sgd=True, lr=0.1)
    cache = _build(tmp_path, live, dtype=dtype)
    cached.use_mad_cache(cache)
    loader = lambda: DataLoader(DATA, batch_size=4, collate_fn=collate)  # noqa: E731
    trainer(max_steps=3).fit(live, loader())
    trainer(max_steps=3).fit(cached, loader())
    tol = {"fp32": 1e-5, "fp16": 5e-3}[dtype]
    torch.testing.assert_close(
        torch.tensor(cached.losses), torch.tensor(live.losses), rtol=tol, atol=tol
    )
    for (k, a), b in zip(live.state_dict().items(), cached.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=k)


def test_cache_never_runs_teachers(tmp_path, tiny_clip, word_tokenizer):
    model = TinyMAD(_cfg(tiny_clip), word_tokenizer)
    cache = _build(tmp_path, model)
    model.use_mad_cache(cache)
    calls = []
    handle = tiny_clip.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        batch = next(iter(DataLoader(DATA, batch_size=4, collate_fn=collate)))
        mad = batch["mad"]
        no_images = MADBatch(
            None, mad.texts, labels=mad.labels, candidates=CANDIDATES, keys=mad.keys
        )
        out = model.model(batch["images"], **word_tokenizer(batch["texts"]))
        loss = model.mad_loss(no_images, out.tokens)  # no teacher images needed with a cache
    finally:
        handle.remove()
    assert torch.isfinite(loss) and not calls
    model.use_mad_cache(None)
    with pytest.raises(ValueError, match="teacher_images"):
        model.mad_loss(no_images, out.tokens)


# ------------------------------------------------------------------ refusals
def test_stale_or_mismatched_cache_is_refused(
    tmp_path, tiny_clip, make_tiny_clip_spec, word_tokenizer
):
    model = TinyMAD(_cfg(tiny_clip), word_tokenizer)
    cache = _build(tmp_path, model)
    path = cache.directory
    with pytest.raises(CacheError, match=r"dataset: cache 'toy', run 'other'"):
        _open(path, model, dataset="other")
    with pytest.raises(CacheError, match=r"split: cache 'train', run 'val'"):
        _open(path, model, split="val")
    with pytest.raises(CacheError, match=r"preprocessing.extra.toy: cache 1, run 2"):
        _open(path, model, preprocessing=preprocessing_record(model, extra={"toy": 2}))
    with pytest.raises(CacheError, match=r"preprocessing.image_transform"):
        _open(
            path,
            model,
            preprocessing=preprocessing_record(model, image_transform=abs, extra={"toy": 1}),
        )
    other = TinyMAD(_cfg(make_tiny_clip_spec(tmp_path / "o.pt", seed=7)), word_tokenizer)
    with pytest.raises(CacheError, match=r"teachers.clip: cache 'open_clip:mad-tiny-clip#"):
        _open(path, other)
    with pytest.raises(CacheError, match="other teachers"):
        other.use_mad_cache(cache)  # the module checks the identities itself too

    model.use_mad_cache(cache)
    batch = mad_batches(DATA, 4)[0]
    with pytest.raises(CacheError, match=r"key\(s\) of MADBatch.keys are not in"):
        cache.teacher_outputs(
            MADBatch(None, batch.texts, keys=["toy/0", "toy/1", "toy/2", "nope"]), {"image"}
        )
    with pytest.raises(CacheError, match="another text"):
        cache.teacher_outputs(MADBatch(None, ["changed text"] * 4, keys=batch.keys), {"image"})
    with pytest.raises(CacheError, match="shared prompts"):
        cache.teacher_outputs(
            MADBatch(None, batch.texts, candidates=["no", "yes"], keys=batch.keys), {"image"}
        )
    with pytest.raises(ValueError, match="MADBatch.keys is None"):
        cache.teacher_outputs(MADBatch(None, batch.texts), {"image"})
    with pytest.raises(CacheError, match=r"\['text'\]"):
        cache.teacher_outputs(batch, {"image", "text"})


def test_corrupt_or_incomplete_cache_is_refused(tmp_path, tiny_clip, word_tokenizer):
    model = TinyMAD(_cfg(tiny_clip), word_tokenizer)
    cache = _build(tmp_path, model, shard_bytes=20_000)
    shard = cache.directory / cache.index["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=rf"{shard.name} is corrupt"):
        verify_cache(cache.directory)
    fresh = _open(cache.directory, model)
    keys = cache.index["shards"][1]["keys"][:2]
    with pytest.raises(CacheError, match=rf"{shard.name} is corrupt"):
        fresh.teacher_outputs(
            MADBatch(None, [DATA.texts[int(k[4:])] for k in keys], keys=keys), {"image"}
        )
    shard.unlink()
    with pytest.raises(CacheError, match=rf"{shard.name} is missing"):
        verify_cache(cache.directory)
    (cache.directory / INDEX_NAME).unlink()
    with pytest.raises(CacheError, match="not a finished teacher-feature cache"):
        _open(cache.directory, model)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _open(tmp_path / "nowhere", model)


def test_crash_mid_write_leaves_no_usable_cache(tmp_path, tiny_clip, word_tokenizer):
    model = TinyMAD(_cfg(tiny_clip), word_tokenizer)

    def crashing():
        for i, b in enumerate(mad_batches(DATA, 2)):
            if i == 4:
                raise KeyboardInterrupt  # e.g. the job is killed after a few shards
            yield b

    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        build_cache(
            out, model, crashing(), dataset="toy", split="train",
            preprocessing=_record(model), shard_bytes=10_000,
        )  # fmt: skip
    assert not (out / INDEX_NAME).exists()
    assert list(out.glob("shard-*.safetensors"))  # finished shards exist ...
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # ... no partial temp file
    with pytest.raises(CacheError, match="not a finished"):
        _open(out, model)
    # a rebuild over an existing (complete) cache needs overwrite, and drops the index first
    good = _build(tmp_path, model)
    with pytest.raises(CacheError, match="overwrite"):
        _build(tmp_path, model)
    again = _build(tmp_path, model, overwrite=True)
    assert len(again) == len(good)


def test_ragged_text_lengths_roundtrip(tmp_path, tiny_mlm_spec, word_tokenizer):
    """Long and short texts in one batch: padding rebuilt, values of valid tokens kept."""
    model = TinyMAD(
        MADConfig(
            teachers={"text": tiny_mlm_spec},
            select=dict(source="discrepancy", modalities=["text"]),
            weight=dict(mode="uniform"),
            kl=dict(instance_level=False),
        ),
        word_tokenizer,
    )
    texts = ["a", "what colour is the small cylinder left of the cube?", "is the ball blue?"]
    batch = MADBatch(None, texts, keys=["s", "l", "m"])
    cache = build_cache(
        tmp_path / "c", model, [batch], dataset="d", split="s",
        preprocessing=_record(model), dtype="fp32",
    )  # fmt: skip
    assert cache.outputs == {"text"}
    for order in (["s", "m"], ["l", "s"], ["m"]):
        sub = MADBatch(None, [texts[["s", "l", "m"].index(k)] for k in order], keys=order)
        live = model.mad_teacher_outputs(sub, frozenset({"text"})).text
        got = cache.teacher_outputs(sub, {"text"}).text
        assert got.tokens.shape[:2] == live.tokens.shape[:2]
        m = live.mask
        assert torch.equal(got.mask, m) and torch.equal(got.word_ids[m], live.word_ids[m])
        torch.testing.assert_close(got.tokens[m], live.tokens[m], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.mlm_logits[m], live.mlm_logits[m], rtol=1e-5, atol=1e-5)


def test_bad_build_arguments(tmp_path, tiny_clip, word_tokenizer):
    model = TinyMAD(_cfg(tiny_clip), word_tokenizer)
    b = mad_batches(DATA, 4)
    kw = dict(dataset="toy", split="train", preprocessing=_record(model))
    with pytest.raises(ValueError, match="dtype"):
        build_cache(tmp_path / "a", model, b, dtype="int8", **kw)
    with pytest.raises(ValueError, match=r"outputs .*\['text'\]"):
        build_cache(tmp_path / "a", model, b, outputs=["text"], **kw)
    with pytest.raises(ValueError, match="duplicate key 'toy/0'"):
        build_cache(tmp_path / "b", model, [b[0], b[0]], **kw)
    no_keys = MADBatch(b[0].teacher_images, b[0].texts, candidates=CANDIDATES)
    with pytest.raises(ValueError, match="MADBatch.keys is None"):
        build_cache(tmp_path / "c", model, [no_keys], **kw)
    with pytest.raises(TypeError, match="MADBatch"):
        build_cache(tmp_path / "d", model, [{"texts": ["a"]}], **kw)
    with pytest.raises(ValueError, match="split"):
        build_cache(tmp_path / "e", model, b, dataset="toy", split="", preprocessing={})


def test_cli_build_verify_info(tmp_path, tiny_clip_spec, capsys, monkeypatch):
    loader_mod = tmp_path / "toy_loader.py"
    loader_mod.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from scale_helpers import ToyData, mad_batches\n"
        "def load(teachers):\n"
        "    return mad_batches(ToyData(6), 4), 'toy', 'train', {'toy': 1}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "cli-cache"
    spec = tiny_clip_spec
    assert main(["build", "--out", str(out), "--teacher", f"clip={spec}",
                 "--loader", "toy_loader:load", "--device", "cpu"]) == 0  # fmt: skip
    assert "6 rows" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == "toy" and info["rows"] == 6
    with pytest.raises(ValueError, match="ROLE=SPEC"):
        main(["build", "--out", str(out), "--teacher", "clip", "--loader", "toy_loader:load"])
    from mad_distill.cli import main as cli_main

    assert cli_main(["cache", "verify", str(out)]) == 0
    assert sys.modules.get("toy_loader") is not None and os.path.isdir(out)


def test_cli_world_split_then_train_side_opens_it(tmp_path, tiny_clip_spec, capsys):
    """`mad-distill cache build --world`: the record the training side rebuilds matches."""
    world = pytest.importorskip("mad_distill.data.world.datamodule")
    out = tmp_path / "world"
    args = ["build", "--world", "vqa", "--pool-size", "8", "--test-size", "4", "--val-size", "0",
            "--batch-size", "4", "--teacher", f"clip={tiny_clip_spec}", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert "8 rows" in capsys.readouterr().out
    from mad_distill.cache import _teacher_holder

    holder = _teacher_holder({"clip": tiny_clip_spec})
    clip = holder.mad_teachers["clip"]
    dm = world.WorldDataModule(
        "vqa", pool_size=8, test_size=4, val_size=0, batch_size=4,
        teacher_preprocess=clip.preprocess,
    )  # fmt: skip
    dm.setup("fit")
    record = preprocessing_record(
        holder, image_transform=dm.train_dataset.teacher_preprocess, extra={"world_image_size": 64}
    )
    cache = TeacherCache(out, dataset="world/vqa", split="train", teachers=holder,
                         preprocessing=record)  # fmt: skip
    batch = next(iter(dm.train_dataloader())).mad
    got = cache.teacher_outputs(batch, {"image", "zero_shot"})
    live = holder.mad_teacher_outputs(batch, frozenset({"image", "zero_shot"}))
    torch.testing.assert_close(got.zero_shot, live.zero_shot, rtol=0, atol=1e-5)
