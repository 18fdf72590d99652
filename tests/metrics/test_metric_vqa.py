"""VQA accuracy against hand-computed cases of the official vqaEval.py logic."""

import math

import pytest
import torch

from mad_distill.metrics import VQAAccuracy, normalize_answer, soft_score, vqa_score
from mad_distill.metrics.vqa import process_digit_article, process_punctuation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("red.", "red"),  # period not followed by a digit goes
        ("2.5", "2.5"),  # a decimal point stays
        ("pizza, salad", "pizza salad"),  # ", " touches a space: removed
        ("pizza,salad", "pizza salad"),  # no space: replaced by a space
        ("1,000", "1000"),  # digit-comma-digit: every listed mark is removed
        ("stop!", "stop "),  # '!' does not touch a space: becomes a space
        ("it's", "it's"),  # the apostrophe is not in the official list
        ("(left)", " left "),
    ],
)
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two People", "2 people"),
        ("the umbrella", "umbrella"),
        ("an apple a day", "apple day"),
        ("none", "0"),
        ("dont know", "don't know"),
        ("Im fine", "im fine"),  # lower-cased first, so the capitalised keys never match
        ("ten", "10"),
    ],
)
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_normalize_answer_cleans_whitespace():
    assert normalize_answer("  The\tDog.\n") == "dog"


COUNT = ["two", "2", "2", "two", "2", "3", "2", "2", "two people", "2"]
PIZZA = ["pizza", "pizza", "a pizza", "pizza", "pizza, salad"] + ["pizza"] * 5


@pytest.mark.parametrize(
    "pred, answers, expected",
    [
        # disagreeing humans: both sides normalised; "2" x8 after "two" -> "2"
        ("two", COUNT, 1.0),
        ("3", COUNT, 0.3),  # 9 subsets see one "3" -> 1/3 each; the 10th sees none
        ("Two People", COUNT, 0.3),
        ("the pizza", PIZZA, 1.0),
        ("pizza,salad", PIZZA, 0.3),
        # 2 of 10: 2 subsets with 1 match (1/3), 8 with 2 (2/3): (2/3 + 16/3) / 10
        ("cat", ["cat"] * 2 + ["dog"] * 8, 0.6),
        ("dog", ["cat"] * 2 + ["dog"] * 8, 1.0),
        ("3", ["cat"] * 3 + ["3"] * 7, 1.0),
        ("cat", ["cat"] * 3 + ["3"] * 7, 0.9),  # 3 subsets see 2 (2/3), 7 see 3 (1)
        ("no", ["yes"] * 6 + ["no"] * 4, 1.0),
        ("1,000", ["1,000"] * 3 + ["1000"] * 7, 1.0),
        ("2.5", ["2.5"] * 4 + ["2"] * 6, 1.0),
        ("dont know", ["don't know"] * 5 + ["dont know"] * 5, 1.0),
        # all humans agree: the script normalises nothing, so only a verbatim answer scores
        ("yes", ["yes"] * 10, 1.0),
        ("Yes", ["yes"] * 10, 0.0),
        ("yes.", ["yes"] * 10, 0.0),
        (" yes\n", ["yes"] * 10, 1.0),  # whitespace is always cleaned
        ("maybe", ["yes"] * 10, 0.0),
    ],
)
def test_vqa_score_official(pred, answers, expected):
    assert vqa_score(pred, answers) == pytest.approx(expected)


def test_vqa_score_normalized_protocol_differs_only_when_humans_agree():
    assert vqa_score("Yes", ["yes"] * 10, "normalized") == 1.0
    assert vqa_score("two", COUNT, "normalized") == vqa_score("two", COUNT, "official")
    with pytest.raises(ValueError, match="protocol"):
        vqa_score("a", ["a"], "lenient")  # type: ignore[arg-type]


@pytest.mark.parametrize("count", range(11))
def test_soft_score_is_the_expected_official_accuracy(count):
    answers = ["x"] * count + ["y"] * (10 - count)
    assert soft_score(count) == pytest.approx(vqa_score("x", answers))
    assert soft_score(count) == pytest.approx([0, 0.3, 0.6, 0.9, 1, 1, 1, 1, 1, 1, 1][count])


def test_metric_overall_and_per_type():
    m = VQAAccuracy()
    m.update(["two", "3"], [COUNT, COUNT], ["number", "number"])
    m.update(["yes"], [["yes"] * 10], ["yes/no"])
    out = m.compute()
    assert out["acc"].item() == pytest.approx((1.0 + 0.3 + 1.0) / 3)
    assert out["acc_number"].item() == pytest.approx(0.65)
    assert out["acc_yes_no"].item() == pytest.approx(1.0)
    assert math.isnan(out["acc_other"].item())


def test_metric_tensor_preds_need_vocab_and_map_through_it():
    vocab = ["yes", "2", "pizza"]
    m = VQAAccuracy(answer_vocab=vocab)
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.0, 5.0]])
    m.update(scores, [COUNT, PIZZA], ["number", "other"])
    assert m.compute()["acc"].item() == pytest.approx(1.0)
    m2 = VQAAccuracy(answer_vocab=vocab)
    m2.update(torch.tensor([0, 2]), [COUNT, PIZZA])
    assert m2.compute()["acc"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="answer_vocab"):
        VQAAccuracy().update(torch.tensor([0]), [COUNT])
    with pytest.raises(ValueError, match="scores"):
        VQAAccuracy(answer_vocab=vocab).update(torch.zeros(1, 5), [COUNT])


def test_metric_errors_name_the_argument():
    m = VQAAccuracy()
    with pytest.raises(ValueError, match="unknown answer_type 'maybe'"):
        m.update(["a"], [["a"] * 10], ["maybe"])
    with pytest.raises(ValueError, match="answers"):
        m.update(["a", "b"], [["a"] * 10])
    with pytest.raises(ValueError, match="protocol"):
        VQAAccuracy(protocol="x")  # type: ignore[arg-type]


def test_metric_states_are_sums_so_ranks_merge_exactly():
    preds = ["two", "3", "yes", "pizza,salad", "cat"]
    answers = [COUNT, COUNT, ["yes"] * 10, PIZZA, ["cat"] * 2 + ["dog"] * 8]
    types = ["number", "number", "yes/no", "other", "other"]
    whole = VQAAccuracy()
    whole.update(preds, answers, types)
    rank0, rank1 = VQAAccuracy(), VQAAccuracy()
    rank0.update(preds[:2], answers[:2], types[:2])
    rank1.update(preds[2:], answers[2:], types[2:])
    rank0.merge_state(rank1)  # what dist_reduce_fx="sum" does across processes
    a, b = whole.compute(), rank0.compute()
    for k in a:
        assert torch.allclose(a[k], b[k], equal_nan=True), k
    for name in ("acc_sum", "count", "type_sum", "type_count"):
        assert whole._reductions[name].__name__ == "dim_zero_sum"
