"""The bench's ``augment`` method option: its checks."""

from __future__ import annotations

import pytest

from mad_distill.bench.augment import check_augment


def test_check_augment_completes_and_names_bad_fields():
    assert check_augment(None, 0.2) is None
    assert check_augment({"kind": "augmix"}, 0.2) == {
        "kind": "augmix",
        "labeled": False,
        "unlabeled": True,
    }
    assert check_augment({"kind": "randaugment", "labeled": True, "unlabeled": False}, 0)["labeled"]
    with pytest.raises(ValueError, match="augment.kind: unknown augmentation 'mixup'"):
        check_augment({"kind": "mixup"}, 0.2)
    with pytest.raises(ValueError, match="augment.kind is required"):
        check_augment({"unlabeled": True}, 0.2)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['severity'\]"):
        check_augment({"kind": "augmix", "severity": 3}, 0.2)
    with pytest.raises(ValueError, match="augment.labeled must be true or false"):
        check_augment({"kind": "augmix", "labeled": "yes"}, 0.2)
    with pytest.raises(ValueError, match="neither labeled nor unlabeled"):
        check_augment({"kind": "augmix", "unlabeled": False}, 0.2)
    with pytest.raises(ValueError, match="no unlabelled inputs"):
        check_augment({"kind": "augmix"}, 0)
    with pytest.raises(TypeError, match="augment must be a mapping"):
        check_augment("augmix", 0.2)
