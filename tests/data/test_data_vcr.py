import pickle

import pytest
import torch

from mad_distill.data._common import RecordError
from mad_distill.data.vcr import (
    VCR_DOMAIN_SPLIT,
    VCR_PERSON_NAMES,
    VCRDataset,
    object_tags,
    render_tokens,
    vcr_domain,
)
from mad_distill.metrics import VCRAccuracy


def _ds(fixtures, name="vcr1annots/train.jsonl", **kw):
    d = fixtures / "vcr"
    return VCRDataset(d / name, d / "vcr1images", **kw)


def test_object_tags_people_get_names_objects_get_class_and_counter():
    tags = object_tags(["person", "bottle", "person", "bottle", "dining table"])
    assert tags == ["Casey", "bottle 1", "Riley", "bottle 2", "dining table 1"]
    many = object_tags(["person"] * (len(VCR_PERSON_NAMES) + 2))
    assert many[len(VCR_PERSON_NAMES)] == "Casey2" and len(set(many)) == len(many)
    assert len(set(VCR_PERSON_NAMES)) == len(VCR_PERSON_NAMES)
    assert object_tags(["car"], object_format="{name}_{tag}") == ["car_1"]


def test_render_tokens_references_lists_and_punctuation():
    tags = ["Casey", "Riley", "Jessie", "car 1"]
    assert render_tokens(["What", "are", [1, 3], "doing", "?"], tags) == (
        "What are Riley and car 1 doing?", [1, 3],
    )  # fmt: skip
    assert render_tokens([[0, 1, 2], "are", "outside", "."], tags)[0] == (
        "Casey, Riley and Jessie are outside."
    )
    assert render_tokens([[2], "'s", "hands", ",", "yes", "."], tags)[0] == "Jessie's hands, yes."
    assert render_tokens([[1], "'", "s", "arm"], tags)[0] == "Riley's arm"
    assert render_tokens(["She", "does", "n't", "(", "ever", ")", "."], tags)[0] == (
        "She doesn't (ever)."
    )
    with pytest.raises(RecordError, match="object reference 4 outside the 4 objects"):
        render_tokens([[4]], tags, "f.jsonl:line 3")
    with pytest.raises(RecordError, match="neither text nor a reference"):
        render_tokens([[]], tags)


def test_q2a_samples_boxes_and_meta(fixtures):
    ds = _ds(fixtures)
    assert len(ds) == 3
    s = ds[1]
    assert s.key == "vcr:train-1:q2a"
    assert s.text == "What are Riley and car 1 doing?"
    assert s.choices[0] == "Riley is leaning on the car 1."
    assert s.choices[1] == "Riley and Casey are dancing."
    assert s.candidates == s.choices  # default template "{choice}"
    assert s.label == 0
    assert s.boxes.shape == (4, 4) and s.boxes.dtype == torch.float32
    assert s.boxes[1].tolist() == [1.0, 1.0, 6.0, 7.0]  # score column dropped
    assert s.meta["question_refs"] == [1, 3]
    assert s.meta["width"] == 16 and s.meta["height"] == 12 and s.image.size == (16, 12)
    assert s.meta["tags"] == ["Casey", "Riley", "Jessie", "car 1"]


def test_qa2r_conditions_on_the_right_answer(fixtures):
    qa = _ds(fixtures, task="qa2r", candidate_template="{question} {choice}")
    s = qa[0]
    assert s.key == "vcr:train-0:qa2r"
    assert s.text == "Does Jessie feel comfortable? No she does not."
    assert s.choices[1] == "Jessie is standing with her arms crossed and looks disturbed."
    assert s.choices[3] == "Jessie's hands are on the car 1."
    assert s.candidates[1] == s.text + " " + s.choices[1]
    assert s.label == 1


def test_q2ar_from_two_aligned_datasets(fixtures):
    q2a, qa2r = _ds(fixtures), _ds(fixtures, task="qa2r")
    assert [k.rsplit(":", 1)[0] for k in q2a.keys()] == [k.rsplit(":", 1)[0] for k in qa2r.keys()]
    m = VCRAccuracy()
    a_lab, r_lab = torch.tensor(q2a.label_ids()), torch.tensor(qa2r.label_ids())
    m.update(a_lab, a_lab, (r_lab + torch.tensor([0, 1, 0])) % 4, r_lab)
    out = m.compute()
    assert out["q2a"].item() == 1.0 and out["q2ar"].item() == pytest.approx(2 / 3)


def test_test_split_without_labels(fixtures):
    ds = _ds(fixtures, "vcr1annots/test.jsonl", require_labels=False)
    assert ds[0].label == -1
    with pytest.raises(RecordError, match="missing field 'answer_label'"):
        _ds(fixtures, "vcr1annots/test.jsonl")
    with pytest.raises(ValueError, match="qa2r"):
        _ds(fixtures, "vcr1annots/test.jsonl", task="qa2r", require_labels=False)


def test_domains(fixtures):
    ds = _ds(fixtures)
    assert ds.domains(by="source") == ["lsmdc", "lsmdc", "movieclips"]
    assert ds.domains(by="movie") == ["3015_CHARLIE_ST_CLOUD"] * 2 + ["Bad_Teacher"]
    hashed = ds.domains(n_groups=64)
    assert hashed[0] == hashed[1] and all(h.startswith("movies_") for h in hashed)
    assert hashed == _ds(fixtures).domains(n_groups=64)  # stable (not Python's salted hash)
    groups = {"comedy": ["Bad_Teacher"]}
    assert ds.domains(by="movie_list", movie_groups=groups) == ["other", "other", "comedy"]
    assert VCR_DOMAIN_SPLIT["by"] == "movie_hash"
    with pytest.raises(ValueError, match="movie_groups"):
        vcr_domain("m", "x/y.jpg", by="movie_list")
    with pytest.raises(ValueError, match="n_buckets"):
        vcr_domain("m", "x/y.jpg", n_groups=0)


@pytest.mark.parametrize(
    "line, exc, pattern",
    [
        (2, RecordError, "malformed JSON"),
        (3, RecordError, "answer_label 7 is not one of 0..3"),
        (4, RecordError, "question: object reference 9 outside the 4 objects"),
        (5, RecordError, "missing field 'rationale_choices'"),
        (6, FileNotFoundError, "image not found: .*missing@0.jpg"),
    ],
)
def test_each_bad_record_kind_raises_with_file_and_line(tmp_path, fixtures, line, exc, pattern):
    src = (fixtures / "vcr" / "broken" / "train.jsonl").read_text().splitlines()
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join([src[0]] + [""] * (line - 2) + [src[line - 1]]) + "\n")
    with pytest.raises(exc, match=pattern) as info:
        VCRDataset(p, fixtures / "vcr" / "vcr1images")
    assert str(info.value).startswith(f"{p}:line {line}: ")


def test_skip_counts(fixtures):
    ds = _ds(fixtures, "broken/train.jsonl", on_error="skip")
    assert ds.keys() == ["vcr:train-0:q2a", "vcr:train-2:q2a"]
    assert ds.report.as_dict()["skipped_by_reason"] == {
        "bad_value": 1, "malformed": 1, "missing_field": 1, "missing_image": 1, "unknown_label": 1,
    }  # fmt: skip


def test_collate_multiple_choice(fixtures):
    ds = _ds(fixtures)
    calls = []

    def proc(texts, choices):
        calls.append((texts, choices))
        return {"n_pairs": torch.tensor(sum(len(c) for c in choices))}

    b = ds.collator(text_processor=proc)([ds[0], ds[2]])
    assert b.inputs["choices"][1][0] == "Casey is thirsty."
    assert len(b.inputs["boxes"]) == 2 and b.inputs["n_pairs"].item() == 8
    assert b.mad.candidates[0] == ds[0].choices and b.labels.tolist() == [1, 0]
    assert calls[0][0] == ["Does Jessie feel comfortable?", "Why is Casey holding bottle 1?"]


def test_no_boxes_and_pickle(fixtures):
    ds = _ds(fixtures, load_boxes=False)
    assert ds[0].boxes is None and ds[0].meta["width"] is None
    assert pickle.loads(pickle.dumps(ds))[2].key == "vcr:train-2:q2a"


def test_domain_split_manifest(fixtures, tmp_path):
    from mad_distill.data._common import make_domain_split
    from mad_distill.data.splits import SplitManifest

    ds = _ds(fixtures)
    tr, te, mtr, mte = make_domain_split(ds, "vcr", ["lsmdc"], ["movieclips"], by="source")
    assert tr.tolist() == [0, 1] and te.tolist() == [2]
    assert mtr.method == "domain:source" and mte.domains == ["movieclips"] and mte.n_total == 3
    mte.verify(te)
    back = SplitManifest.read(mte.write(tmp_path / "test.json"))
    assert back == mte
    with pytest.raises(ValueError, match="unknown domain"):
        make_domain_split(ds, "vcr", ["lsmdc"], ["youtube"], by="source")
