import json
import logging

import pytest
import torch

from mad_distill.data._common import RecordError
from mad_distill.data.vqa import (
    VQA_DOMAIN_SPLIT,
    AnswerVocab,
    VQADataset,
    vqa_domain,
    vqa_question_group,
)
from mad_distill.metrics import VQAAccuracy
from mad_distill.types import MADBatch


def _paths(fixtures, sub="train2014", folder="vqa"):
    d = fixtures / folder
    return (
        d / f"v2_OpenEnded_mscoco_{sub}_questions.json",
        d / f"v2_mscoco_{sub}_annotations.json",
        fixtures / "vqa" / sub,
    )


def test_vocab_normalises_and_ranks_deterministically(fixtures):
    ann = fixtures / "vqa" / "v2_mscoco_train2014_annotations.json"
    v = AnswerVocab.build(ann, source="answers")
    # "an umbrella"/"the umbrella" -> "umbrella"; "STOP"/"stop!" -> "stop"; "two" -> "2"
    assert v.answers[:6] == ["yes", "stop", "umbrella", "2", "red", "rain"]
    assert v.counts[:6] == [10, 9, 9, 8, 8, 6]
    assert "2 people" in v.answers and "two people" not in v.answers
    assert v.index("Two People") == v.answers.index("2 people")
    assert v.index("zebra") == -1
    mc = AnswerVocab.build(ann)  # multiple_choice_answer: one per question
    assert sorted(mc.answers) == sorted(["red", "2", "yes", "umbrella", "rain", "stop"])
    assert AnswerVocab.build(ann, top_n=2, source="answers").answers == ["yes", "stop"]
    assert AnswerVocab.build(ann, min_count=9, source="answers").answers == [
        "yes", "stop", "umbrella",
    ]  # fmt: skip


def test_vocab_save_load_roundtrip(tmp_path, fixtures):
    v = AnswerVocab.build(fixtures / "vqa" / "v2_mscoco_train2014_annotations.json")
    v.save(tmp_path / "vocab.json")
    w = AnswerVocab.load(tmp_path / "vocab.json")
    assert w.answers == v.answers and w.counts == v.counts and w.info == v.info
    (tmp_path / "bad.json").write_text(json.dumps({"answers": ["a"]}))
    with pytest.raises(ValueError, match="not an answer vocabulary"):
        AnswerVocab.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unique"):
        AnswerVocab(["a", "a"])


def test_soft_targets_labels_and_meta(fixtures):
    q, a, img = _paths(fixtures)
    v = AnswerVocab.build(a, source="answers")
    ds = VQADataset(q, a, img, vocab=v)
    assert len(ds) == 6
    s = ds[1]  # "How many people are there?": two/2 x8, 3 x1, two people x1
    assert s.key == "vqa:9001" and s.text == "How many people are there?"
    assert s.target[v.index("2")].item() == pytest.approx(1.0)
    assert s.target[v.index("3")].item() == pytest.approx(0.3)
    assert s.target[v.index("2 people")].item() == pytest.approx(0.3)
    assert s.target.sum().item() == pytest.approx(1.6)
    assert s.label == v.index("2")
    assert s.meta["answer_type"] == "number" and len(s.meta["answers"]) == 10
    assert s.image.size == (8, 8) and s.image.mode == "RGB"
    # the soft target is the official accuracy of each vocabulary answer
    for k, ans in enumerate(v.answers):
        from mad_distill.metrics import vqa_score

        assert s.target[k].item() == pytest.approx(vqa_score(ans, s.meta["answers"]))
    assert ds.candidates[0] == "a photo of yes."


def test_val_split_with_train_vocab_and_metric(fixtures):
    _, train_ann, _ = _paths(fixtures)
    v = AnswerVocab.build(train_ann, source="answers")
    q, a, img = _paths(fixtures, "val2014")
    ds = VQADataset(q, a, img, vocab=v)
    batch = ds.collator()([ds[i] for i in range(len(ds))])
    assert isinstance(batch.mad, MADBatch)
    assert batch.targets.shape == (3, len(v))
    assert batch.mad.candidates == ds.candidates  # shared prompts
    # "pizza" is not in the training vocabulary: that question has no label
    assert batch.labels.tolist() == [v.index("3"), v.index("yes"), -1]
    # predicting the argmax of the soft target scores the official accuracy of that answer:
    # "3" -> 1, "yes" (6 yes / 4 no) -> 1, the all-zero pizza row argmaxes to "yes" -> 0
    m = VQAAccuracy(answer_vocab=v.answers)
    metas = batch.meta
    m.update(batch.targets, [x["answers"] for x in metas], [x["answer_type"] for x in metas])
    out = m.compute()
    assert out["acc"].item() == pytest.approx(2 / 3)
    assert out["acc_number"].item() == 1.0 and out["acc_other"].item() == 0.0


def test_test_split_has_no_targets(fixtures):
    d = fixtures / "vqa"
    ds = VQADataset(
        d / "v2_OpenEnded_mscoco_test2015_questions.json", None, d / "test2015", vocab=None
    )
    s = ds[0]
    assert s.label == -1 and s.target is None and s.meta["answers"] is None
    with pytest.raises(ValueError, match="annotations"):
        ds.domains()


def test_domains(fixtures):
    q, a, img = _paths(fixtures)
    ds = VQADataset(q, a, img)
    assert ds.domains() == ["color", "count", "verify", "what", "other", "what"]
    assert ds.domains("answer_type")[:3] == ["other", "number", "yes/no"]
    assert vqa_question_group("what is the color of the") == "color"
    assert vqa_question_group("none of the above") == "other"
    assert set(VQA_DOMAIN_SPLIT["train"]).isdisjoint(VQA_DOMAIN_SPLIT["test"])
    with pytest.raises(ValueError, match="by must be"):
        vqa_domain("how many", "number", "scene")  # type: ignore[arg-type]


def test_deterministic_order(fixtures):
    q, a, img = _paths(fixtures)
    assert VQADataset(q, a, img).keys() == VQADataset(q, a, img).keys()


def test_broken_raise_names_file_and_record(fixtures):
    q, a, img = _paths(fixtures, folder="vqa/broken")
    img = fixtures / "vqa" / "train2014"
    with pytest.raises(FileNotFoundError, match=r"questions\[1\]: image not found: .*000000000099"):
        VQADataset(q, a, img)
    # without the image check the next bad record is the unknown answer type
    with pytest.raises(RecordError, match=r"annotations\[2\]: unknown answer_type 'maybe'"):
        VQADataset(q, a, img, check_images=False)


def test_broken_skip_counts_and_logs(fixtures, caplog):
    q, a, _ = _paths(fixtures, folder="vqa/broken")
    with caplog.at_level(logging.WARNING, logger="mad_distill.data"):
        ds = VQADataset(q, a, fixtures / "vqa" / "train2014", on_error="skip")
    assert len(ds) == 2 and [s.key for s in (ds[0], ds[1])] == ["vqa:9000", "vqa:30000"]
    r = ds.report.as_dict()
    assert r["read"] == 6 and r["kept"] == 2 and r["skipped"] == 4
    assert r["skipped_by_reason"] == {
        "missing_annotation": 1, "missing_field": 1, "missing_image": 1, "unknown_label": 1,
    }  # fmt: skip
    assert any("questions[4]: missing field 'question'" in e for e in r["examples"])
    assert "kept 2/6 records, skipped 4" in caplog.text


def test_malformed_json_names_line_and_column(fixtures):
    q, _, img = _paths(fixtures)
    bad = fixtures / "vqa" / "broken" / "truncated_annotations.json"
    with pytest.raises(ValueError, match=r"truncated_annotations.json:line 1 column \d+"):
        VQADataset(q, bad, img)


def test_bad_arguments(fixtures, tmp_path):
    q, a, img = _paths(fixtures)
    with pytest.raises(FileNotFoundError, match="questions file"):
        VQADataset(tmp_path / "nope.json", a, img)
    with pytest.raises(FileNotFoundError, match="image_dir"):
        VQADataset(q, a, tmp_path / "nope")
    with pytest.raises(ValueError, match="on_error"):
        VQADataset(q, a, img, on_error="ignore")
    with pytest.raises(ValueError, match="prompt_template"):
        VQADataset(q, a, img, prompt_template="a photo")


def test_image_deleted_after_indexing_raises_with_record(fixtures, tmp_path):
    import shutil

    q, a, img = _paths(fixtures)
    copy = tmp_path / "train2014"
    shutil.copytree(img, copy)
    ds = VQADataset(q, a, copy)
    (copy / "COCO_train2014_000000000009.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"questions\[0\]: image not found"):
        ds[0]


def test_collator_with_transforms(fixtures):
    q, a, img = _paths(fixtures)
    v = AnswerVocab.build(a)
    ds = VQADataset(q, a, img, vocab=v)

    def to_tensor(im):
        return torch.zeros(3, 4, 4)

    col = ds.collator(image_transform=to_tensor, teacher_transform=to_tensor)
    b = col([ds[0], ds[2]])
    assert b.inputs["pixel_values"].shape == (2, 3, 4, 4)
    assert b.mad.teacher_images.shape == (2, 3, 4, 4)
    assert b.mad.keys == ["vqa:9000", "vqa:25000"]
    assert torch.equal(b.mad.extra["targets"], b.targets)
    assert len(b.to("cpu")) == 2
