import pickle
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from mad_distill.data._common import RecordError
from mad_distill.data.snli_ve import (
    SNLI_VE_DOMAIN_SPLIT,
    SNLI_VE_LABELS,
    SNLIVEDataset,
    snli_ve_scene_group,
)
from mad_distill.metrics import SNLIVEAccuracy


def _ds(fixtures, name="snli_ve_train.jsonl", **kw):
    d = fixtures / "snli_ve"
    return SNLIVEDataset(d / name, d / "flickr30k-images", **kw)


def test_samples(fixtures):
    ds = _ds(fixtures)
    assert len(ds) == 7
    s = ds[1]
    assert s.key == "snli_ve:1000001.jpg#0r1c"
    assert s.text == "The man is sleeping in his bed."
    assert SNLI_VE_LABELS[s.label] == "contradiction" and s.meta["gold_label"] == "contradiction"
    assert s.candidates == [
        "a photo showing that the man is sleeping in his bed.",
        "a photo that may or may not show that the man is sleeping in his bed.",
        "a photo showing that it is not true that the man is sleeping in his bed.",
    ]
    assert s.image.size == (10, 8)
    assert ds.label_ids() == [0, 2, 1, 0, 1, 2, 0]


def test_scene_domains_are_per_image(fixtures):
    ds = _ds(fixtures)
    # image 1000001 has an ocean caption and a "surfer ... city pier" one: both vote water
    assert ds.domains() == ["water", "water", "water", "urban", "urban", "indoor", "nature"]
    assert snli_ve_scene_group("Kids build a snowman in the snow.") == "snow"
    assert snli_ve_scene_group("A man reads.") == "other"
    # priority order: a skier by a lake is water (earlier group)
    assert snli_ve_scene_group("A skier next to a lake") == "water"
    dev = _ds(fixtures, "snli_ve_dev.jsonl")
    assert dev.domains() == ["snow", "snow", "sports"]
    assert set(SNLI_VE_DOMAIN_SPLIT["train"]).isdisjoint(SNLI_VE_DOMAIN_SPLIT["test"])


def test_per_image_majority_vote(tmp_path, fixtures):
    import json

    lines = [json.loads(x) for x in (fixtures / "snli_ve" / "snli_ve_train.jsonl").open()]
    # image 1000002: captions "city street" (urban) and "past a store" (urban) + add a park one
    extra = dict(lines[3], captionID="1000002.jpg#3", pairID="1000002.jpg#3r1e",
                 sentence1="Two people sit in a park.")  # fmt: skip
    p = tmp_path / "snli_ve_train.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [lines[3], lines[4], extra]) + "\n")
    ds = SNLIVEDataset(p, fixtures / "snli_ve" / "flickr30k-images")
    assert ds.domains() == ["urban", "urban", "urban"]  # 2 urban votes beat 1 nature


@pytest.mark.parametrize(
    "line, exc, pattern",
    [
        (2, RecordError, r"line 2: malformed JSON"),
        (3, RecordError, r"line 3: unknown gold_label '-'; allowed: \['entailment'"),
        (4, RecordError, r"line 4: missing field 'sentence2'"),
        (5, FileNotFoundError, r"line 5: image not found: .*9999999.jpg"),
    ],
)
def test_each_bad_record_kind_raises_with_file_and_line(tmp_path, fixtures, line, exc, pattern):
    src = (fixtures / "snli_ve" / "broken" / "snli_ve_train.jsonl").read_text().splitlines()
    # keep the line numbers: the earlier bad lines become blank lines (which are not records)
    kept = [src[0]] + [""] * (line - 2) + [src[line - 1]]
    p = tmp_path / "snli_ve_train.jsonl"
    p.write_text("\n".join(kept) + "\n")
    with pytest.raises(exc, match=pattern) as info:
        SNLIVEDataset(p, fixtures / "snli_ve" / "flickr30k-images")
    assert str(info.value).startswith(f"{p}:line {line}: ")


def test_skip_counts(fixtures):
    ds = _ds(fixtures, "broken/snli_ve_train.jsonl", on_error="skip")
    assert [ds[i].key for i in range(len(ds))] == [
        "snli_ve:1000001.jpg#0r1e",
        "snli_ve:1000004.jpg#0r1e",
    ]
    assert ds.report.as_dict()["skipped_by_reason"] == {
        "malformed": 1, "missing_field": 1, "missing_image": 1, "unknown_label": 1,
    }  # fmt: skip
    assert "kept 2/6 records, skipped 4" in str(ds.report)


def test_loader_and_metric_with_workers_pickling(fixtures):
    ds = _ds(fixtures, "snli_ve_dev.jsonl")
    ds[0]  # opens the file handle; pickling must drop it
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[2].key == ds[2].key
    dl = DataLoader(ds, batch_size=2, collate_fn=ds.collator())
    m = SNLIVEAccuracy()
    for b in dl:
        assert isinstance(b.mad.candidates[0], list) and len(b.mad.candidates[0]) == 3
        m.update(b.labels, b.labels)
    assert m.compute()["acc"].item() == 1.0


def test_image_checked_lazily_when_check_disabled(tmp_path, fixtures):
    img = tmp_path / "flickr30k-images"
    shutil.copytree(fixtures / "snli_ve" / "flickr30k-images", img)
    (img / "1000006.jpg").unlink()
    ds = SNLIVEDataset(fixtures / "snli_ve" / "snli_ve_dev.jsonl", img, check_images=False)
    assert len(ds) == 3
    with pytest.raises(FileNotFoundError, match=r"snli_ve_dev.jsonl:line 3: image not found"):
        ds[2]


def test_bad_arguments(fixtures):
    with pytest.raises(ValueError, match="label_prompts"):
        _ds(fixtures, label_prompts={"entailment": "{hypothesis}"})
    with pytest.raises(FileNotFoundError, match="jsonl"):
        _ds(fixtures, "nope.jsonl")
    assert torch.is_tensor(torch.tensor(_ds(fixtures).label_ids()))


def test_domain_split_manifest(fixtures):
    from mad_distill.data._common import make_domain_split

    ds = _ds(fixtures)
    tr, te, mtr, _ = make_domain_split(ds, "snli_ve", ["urban", "indoor"], ["water", "nature"])
    assert tr.tolist() == [3, 4, 5] and te.tolist() == [0, 1, 2, 6]
    assert mtr.method == "domain:scene" and mtr.n == 3
