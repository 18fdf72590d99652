"""``require`` and ``host_to_device``: the MAD step's input checks and host-to-GPU copies."""

from __future__ import annotations

import pytest
import torch

from mad_distill.ops._utils import SYNC_CHECKS_ENV, host_to_device, require


def test_require_raises_the_given_error_with_detail_on_cpu():
    require(torch.tensor([True, True]), "never shown")
    with pytest.raises(TypeError, match=r"^bad labels, got 3$"):
        require(torch.tensor([True, False]), "bad labels", TypeError, detail=lambda: ", got 3")
    with pytest.raises(ValueError, match="empty is fine, false is not"):
        require(torch.tensor(False), "empty is fine, false is not")
    require(torch.ones(0, dtype=torch.bool), "an empty check passes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_require_on_cuda_is_eager_only_when_asked(monkeypatch):
    monkeypatch.setenv(SYNC_CHECKS_ENV, "1")
    with pytest.raises(ValueError, match="eager"):
        require(torch.tensor([False], device="cuda"), "eager")
    monkeypatch.delenv(SYNC_CHECKS_ENV)
    require(torch.tensor([True], device="cuda"), "device-side, passes")
    torch.cuda.synchronize()


def test_host_to_device_on_cpu_is_a_plain_move():
    t = torch.arange(6).view(2, 3)[:, :2]
    out = host_to_device(t, "cpu")
    assert out is t or torch.equal(out, t)
    assert torch.equal(host_to_device(t, torch.device("cpu")), t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_to_device_to_cuda_keeps_values_of_a_strided_view():
    t = torch.arange(12).view(3, 4)[:, 1:3]
    out = host_to_device(t, "cuda")
    assert out.is_cuda and torch.equal(out.cpu(), t)
