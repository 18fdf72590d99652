"""The embedded world: determinism, domains, task semantics and label sanity, the datamodule."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from mad_distill.data.splits import SplitManifest, low_shot_indices
from mad_distill.data.world import (
    DOMAINS,
    SNLI_LABELS,
    TASKS,
    VQA_ANSWERS,
    WorldBatch,
    WorldDataModule,
    generate_images,
    generate_scene,
    group_logits,
    make_instance,
    world_vocabulary,
)
from mad_distill.data.world.generator import task_rng
from mad_distill.data.world.scene import (
    NUMBER_WORDS,
    SHAPES,
    count,
    holds,
    plural,
    scene_caption,
)
from mad_distill.data.world.tasks import _TASK_CODE
from mad_distill.types import MADBatch

N = 400  # instances per statistical check
SINGULAR = {**{plural(s): s for s in SHAPES}, **{s: s for s in SHAPES}}


def _instances(task: str, n: int = N, split: str = "train"):
    code = _TASK_CODE[task]
    for i in range(n):
        scene = generate_scene(0, split, i)
        yield scene, make_instance(task, scene, task_rng(0, split, code, i))


# ------------------------------------------------------------------ generation
def test_same_seed_same_bytes_other_seed_other_bytes():
    idx = list(range(32))
    for d in DOMAINS:
        a = generate_images(0, "train", d, idx)
        assert a.dtype == np.uint8 and a.shape == (32, 64, 64, 3)
        assert a.tobytes() == generate_images(0, "train", d, idx).tobytes()
        assert a.tobytes() != generate_images(1, "train", d, idx).tobytes()
    # an image depends on its own index only, not on the batch it is rendered in
    single = generate_images(0, "train", "textured", [5])
    assert np.array_equal(single[0], generate_images(0, "train", "textured", idx)[5])


def test_train_and_test_pools_differ():
    train = [scene_caption(generate_scene(0, "train", i)) for i in range(50)]
    test = [scene_caption(generate_scene(0, "test", i)) for i in range(50)]
    assert train != test


def test_domains_differ_in_pixels_but_not_in_content():
    idx = list(range(64))
    flat = generate_images(0, "test", "flat", idx).astype(np.float32)
    tex = generate_images(0, "test", "textured", idx).astype(np.float32)
    assert np.abs(flat - tex).mean() > 60  # very different pixels
    assert flat.mean() > tex.mean() + 60  # light plain vs dark textured backgrounds
    # textured backgrounds vary within an image; flat ones do not
    assert flat[:, :4, :4].std(axis=(1, 2)).mean() < 2 < tex[:, :4, :4].std(axis=(1, 2)).mean()
    dm = WorldDataModule("vqa", fraction=1.0, pool_size=50, test_size=16, val_size=0)
    dm.setup("test")
    a, b = (next(iter(dl)) for dl in dm.test_dataloader())
    assert a.domain == "flat" and b.domain == "textured"
    assert a.texts == b.texts and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, b.images)


def test_bad_generator_inputs():
    with pytest.raises(ValueError, match="domain: unknown domain 'sketch'"):
        generate_images(0, "train", "sketch", [0])
    with pytest.raises(ValueError, match="split: unknown split 'dev'"):
        generate_scene(0, "dev", 0)
    with pytest.raises(ValueError, match="index"):
        generate_scene(0, "train", -1)
    with pytest.raises(ValueError, match="task: unknown task 'gqa'"):
        make_instance("gqa", generate_scene(0, "train", 0), np.random.default_rng(0))


# ------------------------------------------------------------------ task semantics
def _obj(scene, colour, shape):
    found = [o for o in scene if o.colour == colour and o.shape == shape]
    return found[0] if found else None


def _statement_true(scene, core: str) -> bool:
    """An independent reading of the SNLI-VE statement forms."""
    if m := re.fullmatch(r"there is an? (\w+) (\w+)", core):
        return count(scene, shape=m[2], colour=m[1]) > 0
    if m := re.fullmatch(r"there (?:is|are) (\w+) (\w+)", core):
        return count(scene, shape=SINGULAR[m[2]]) == NUMBER_WORDS.index(m[1])
    if m := re.fullmatch(r"the (\w+) is (\w+)", core):
        return [o.colour for o in scene if o.shape == m[1]] == [m[2]]
    if m := re.fullmatch(
        r"the (\w+) (\w+) is (left of|right of|above|below) the (\w+) (\w+)", core
    ):
        return holds(m[3], _obj(scene, m[1], m[2]), _obj(scene, m[4], m[5]))
    if m := re.fullmatch(r"the (\w+) (\w+) is (small|large)", core):
        return _obj(scene, m[1], m[2]).size == m[3]
    raise AssertionError(f"unparsed statement {core!r}")


def test_snli_labels_follow_the_statement_truth_and_are_balanced():
    labels = Counter()
    for scene, x in _instances("snli_ve"):
        core, _, clause = x.text.rstrip(".").partition(" and ")
        assert _statement_true(scene, core) == (x.label != 2), x.text
        assert bool(clause) == (x.label == 1) or x.label == 2
        labels[x.label] += 1
        # the E / N / C candidate groups: bare statement, statement + clause, alternatives
        assert x.groups[:2] == [0, 1] and set(x.groups[2:]) <= {2, -1}
        alts = [c.rstrip(".") for c, g in zip(x.candidates, x.groups) if g == 2]
        if x.label == 2 and x.qtype in ("colour", "relation", "count", "size"):
            assert any(_statement_true(scene, a) for a in alts), x.text
    assert all(abs(labels[k] / N - 1 / 3) < 0.08 for k in range(3)), labels


def test_vqa_answers_are_correct_and_soft_scores_well_formed():
    qtypes, answers = Counter(), Counter()
    for scene, x in _instances("vqa"):
        ans = VQA_ANSWERS[x.label]
        q = x.text
        if m := re.fullmatch(r"what colour is the (\w+)\?", q):
            assert [o.colour for o in scene if o.shape == m[1]] == [ans]
        elif m := re.fullmatch(r"how many (\w+) are there\?", q):
            assert count(scene, shape=SINGULAR[m[1]]) == int(ans)
        elif m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q):
            assert (count(scene, shape=m[2], colour=m[1]) > 0) == (ans == "yes")
        elif m := re.fullmatch(
            r"what shape is (left of|right of|above|below) the (\w+) (\w+)\?", q
        ):
            ref = _obj(scene, m[2], m[3])
            assert {o.shape for o in scene if o is not ref and holds(m[1], o, ref)} == {ans}
        elif m := re.fullmatch(r"what size is the (\w+) (\w+)\?", q):
            assert _obj(scene, m[1], m[2]).size == ans
        else:
            raise AssertionError(q)
        assert len(x.answers) == 10
        assert x.scores.shape == (len(VQA_ANSWERS),)
        assert set(np.round(x.scores * 3).tolist()) <= {0, 1, 2, 3}
        assert x.scores[x.label] == x.scores.max() > 0
        assert x.groups.count(-1) < len(x.groups)
        qtypes[x.qtype] += 1
        answers[ans] += 1
    assert len(qtypes) == 5 and min(qtypes.values()) > N / 10
    assert 0.35 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.65
    assert len(answers) >= 15  # the answer vocabulary is used broadly


def test_vcr_has_one_correct_choice_and_uniform_labels():
    labels, rlabels = Counter(), Counter()
    for _, x in _instances("vcr"):
        assert len(x.choices) == len(set(x.choices)) == 4
        assert len(x.rationales) == len(set(x.rationales)) == 4
        assert len(x.candidates) == len(x.rationale_candidates) == 4
        labels[x.label] += 1
        rlabels[x.rationale_label] += 1
    for c in (labels, rlabels):
        assert sorted(c) == [0, 1, 2, 3] and min(c.values()) > N / 4 * 0.7


@pytest.mark.parametrize("reduce", ["mean", "max", "logsumexp"])
def test_group_logits_matches_brute_force(reduce):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g)
    groups = torch.randint(-1, 4, (5, 7), generator=g)
    out = group_logits(logits, groups, 4, reduce=reduce)
    for b in range(5):
        for c in range(4):
            sel = logits[b][groups[b] == c]
            if not len(sel):
                assert out[b, c] == float("-inf")
                continue
            probs = sel.exp()
            want = {"mean": probs.mean(), "max": probs.max(), "logsumexp": probs.sum()}[reduce]
            assert torch.allclose(out[b, c], want.log(), atol=1e-6)
    with pytest.raises(ValueError, match="groups"):
        group_logits(logits, groups[:, :3], 4)
    with pytest.raises(ValueError, match="num_classes"):
        group_logits(logits, groups, 2)
    with pytest.raises(ValueError, match="reduce: unknown reduction 'median'"):
        group_logits(logits, groups, 4, reduce="median")


# ------------------------------------------------------------------ datamodule
@pytest.mark.parametrize("task", TASKS)
def test_datamodule_batches(task):
    dm = WorldDataModule(
        task, fraction=0.05, seed=1, pool_size=400, test_size=24, val_size=8, batch_size=6
    )
    dm.setup("fit")
    assert len(dm.train_dataset) == 20
    b = next(iter(dm.train_dataloader()))
    assert isinstance(b, WorldBatch) and isinstance(b.mad, MADBatch)
    assert b.images.shape == (6, 3, 64, 64) and 0 <= b.images.min() and b.images.max() <= 1
    assert b.labels.shape == (6,) and int(b.labels.max()) < dm.num_classes
    assert b.mad.teacher_images.shape == (6, 3, 64, 64)
    assert len(b.mad.candidates) == 6 and all(len(c) == dm.num_candidates for c in b.mad.candidates)
    groups = b.mad.extra["candidate_groups"]
    assert groups.shape == (6, dm.num_candidates)
    # the ground-truth class always has a candidate voting for it
    assert all(int(y) in groups[i].tolist() for i, y in enumerate(b.labels))
    if task == "vqa":
        assert b.answer_scores.shape == (6, len(VQA_ANSWERS))
    if task == "vcr":
        assert all(len(c) == 4 for c in b.choices)
        assert b.mad.texts[0] == f"{b.texts[0]} {b.choices[0][int(b.labels[0])]}"
    if task == "snli_ve":
        assert dm.class_names == list(SNLI_LABELS)
    moved = b.to("cpu")
    assert isinstance(moved, WorldBatch) and torch.equal(moved.images, b.images)
    dm.setup("test")
    tls = dm.test_dataloader()
    assert len(tls) == 2 and sum(len(tb) for tb in tls[0]) == 24


def test_teacher_images_use_the_open_clip_transform():
    import open_clip
    from PIL import Image

    from mad_distill.data.world.zero_shot import images_to_tensor

    dm = WorldDataModule("vqa", fraction=1.0, pool_size=8, val_size=0, test_size=4, batch_size=4)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    raw = (b.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    tf = open_clip.image_transform(64, is_train=False)
    want = torch.stack([tf(Image.fromarray(im)) for im in raw])
    assert torch.allclose(b.mad.teacher_images, want, atol=1e-5)
    fast = images_to_tensor(raw, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    assert torch.allclose(fast, want, atol=1e-5)


def test_low_shot_splits_nested_and_manifests(tmp_path):
    sets = []
    for f in (0.01, 0.05, 0.1, 1.0):
        dm = WorldDataModule("snli_ve", fraction=f, seed=2, pool_size=1000, stratify=False)
        assert np.array_equal(dm.train_indices, low_shot_indices(1000, f, 2))
        sets.append(set(dm.train_indices.tolist()))
    assert sets[0] < sets[1] < sets[2] < sets[3]
    dm = WorldDataModule(
        "vcr",
        "textured",
        "flat",
        fraction=0.1,
        seed=0,
        pool_size=300,
        test_size=10,
        val_size=5,
        vcr_mode="qa2r",
    )
    paths = dm.write_manifests(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    train = SplitManifest.read(tmp_path / "train.json")
    train.verify(dm.train_indices)
    assert train.domains == ["textured"] and train.n == 30 and train.extra["vcr_mode"] == "qa2r"
    # stratified by label: every rationale label appears in a 10 % split of 300
    dm.setup("fit")
    assert sorted(set(dm.train_dataset.labels.tolist())) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task="gqa"), "task: unknown task 'gqa'"),
        (dict(task="vqa", domain_train="sketch"), "domain: unknown domain 'sketch'"),
        (dict(task="vqa", domain_test=["flat", "cartoon"]), "unknown domain 'cartoon'"),
        (dict(task="vqa", fraction=0.0), "fraction must be in"),
        (dict(task="vqa", fraction=1.2), "fraction must be in"),
        (dict(task="vqa", fraction=0.001, pool_size=500), "empty"),
        (dict(task="vcr", vcr_mode="q2r"), "vcr_mode"),
        (dict(task="vqa", batch_size=0), "batch_size"),
    ],
)
def test_datamodule_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorldDataModule(**{"pool_size": 200, **kwargs})


def test_vocabulary_covers_the_texts():
    words = {w for t in world_vocabulary(n_scenes=300) for w in re.findall(r"\w+", t.lower())}
    dm = WorldDataModule("vcr", fraction=1.0, pool_size=30, test_size=30, val_size=0)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    texts = batch.texts + [c for cs in batch.choices for c in cs]
    missing = {w for t in texts for w in re.findall(r"\w+", t.lower())} - words
    assert not missing
