"""Split builders: low-shot nesting and stratification, domain splits, manifests, bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mad_distill.data.splits import (
    SplitManifest,
    domain_split,
    indices_sha256,
    low_shot_indices,
    low_shot_size,
)

FRACTIONS = (0.01, 0.05, 0.1, 1.0)


@pytest.mark.parametrize("stratified", [False, True])
def test_fractions_are_nested_for_one_seed(stratified):
    n = 10_000
    labels = np.arange(n) % 7 if stratified else None
    prev: set[int] = set()
    for f in FRACTIONS:
        idx = low_shot_indices(n, f, seed=3, labels=labels)
        assert len(idx) == math.floor(f * n)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, unique
        assert prev <= set(idx.tolist())
        prev = set(idx.tolist())
    assert prev == set(range(n))


def test_deterministic_and_seed_dependent():
    a = low_shot_indices(5000, 0.05, seed=1)
    b = low_shot_indices(5000, 0.05, seed=1)
    c = low_shot_indices(5000, 0.05, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stratified_prefix_keeps_class_proportions():
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c"], size=3000, p=[0.6, 0.3, 0.1])
    for f in (0.01, 0.05, 0.2):
        idx = low_shot_indices(len(labels), f, seed=0, labels=labels)
        for cls in "abc":
            expected = f * np.sum(labels == cls)
            assert abs(np.sum(labels[idx] == cls) - expected) <= 1.5


def test_float_error_does_not_lose_an_item():
    assert low_shot_size(100, 0.29) == 29
    assert low_shot_size(10_000, 0.07) == 700


@given(
    n=st.integers(1, 3000),
    fracs=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=4),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=40, deadline=None)
def test_nesting_property(n, fracs, seed):
    fracs = sorted(f for f in fracs if math.floor(f * n + 1e-9) >= 1)
    sets = [set(low_shot_indices(n, f, seed).tolist()) for f in fracs]
    for small, big in zip(sets, sets[1:]):
        assert small <= big


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="fraction"):
        low_shot_indices(100, bad, seed=0)


@pytest.mark.parametrize("bad", ["0.1", True, None])
def test_fraction_of_wrong_type_is_refused(bad):
    with pytest.raises(TypeError, match="fraction"):
        low_shot_indices(100, bad, seed=0)


def test_empty_split_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"empty.*fraction=0.01.*n=50"):
        low_shot_indices(50, 0.01, seed=0)


def test_bad_labels_and_seed():
    with pytest.raises(ValueError, match="labels"):
        low_shot_indices(10, 0.5, seed=0, labels=[0, 1])
    with pytest.raises(ValueError, match="seed"):
        low_shot_indices(10, 0.5, seed=-1)


def test_domain_split_partitions_items():
    dom = ["flat", "textured", "flat", "sketch", "textured"]
    tr, te = domain_split(dom, "flat", ["textured", "sketch"])
    assert tr.tolist() == [0, 2] and te.tolist() == [1, 3, 4]


def test_domain_split_errors_name_the_domain():
    dom = ["flat", "textured"]
    with pytest.raises(
        ValueError, match=r"unknown domain 'cartoon'.*known: \['flat', 'textured'\]"
    ):
        domain_split(dom, "flat", "cartoon")
    with pytest.raises(ValueError, match=r"\['flat'\].*both"):
        domain_split(dom, ["flat"], ["flat", "textured"])
    with pytest.raises(ValueError, match="train_domains"):
        domain_split(dom, [], "flat")


def test_manifest_round_trip_and_verify(tmp_path):
    idx = low_shot_indices(1000, 0.05, seed=4)
    m = SplitManifest.from_indices(
        idx,
        dataset="world/vqa",
        split="train",
        fraction=0.05,
        seed=4,
        n_total=1000,
        method="seeded-permutation-prefix",
        domains=["flat"],
        extra={"world_seed": 0},
    )
    path = m.write(tmp_path / "sub" / "train.json")
    assert [p.name for p in path.parent.iterdir()] == ["train.json"]  # no temp file left
    back = SplitManifest.read(path)
    assert back == m
    assert json.loads(path.read_text())["sha256"] == indices_sha256(idx)
    back.verify(idx[::-1])  # order does not matter
    with pytest.raises(ValueError, match="does not match its manifest"):
        back.verify(idx[:-1])


def test_manifest_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        SplitManifest.read(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SplitManifest.read(bad)
    bad.write_text(json.dumps({"dataset": "x"}))
    with pytest.raises(ValueError, match="missing field"):
        SplitManifest.read(bad)
