"""FeatureTap: forward hooks by module path."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mad_distill.hooks import FeatureTap, get_submodule


class _TupleLayer(nn.Module):
    """Returns a tuple like Hugging Face encoder layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 4)

    def forward(self, x):
        h = self.dense(x)
        return (h, h.abs())


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([_TupleLayer() for _ in range(3)])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        for layer in self.encoder.layer:
            x = layer(x)[0]
        return self.head(x)


def test_captures_tensor_and_tuple_outputs_with_grad():
    net = _Net()
    x = torch.randn(2, 4)
    with FeatureTap(net, {"mid": "encoder.layer.1", "dense": "encoder.layer.2.dense"}) as tap:
        out = net(x)
    assert not tap.active
    h1 = net.encoder.layer[1](net.encoder.layer[0](x)[0])[0]
    torch.testing.assert_close(tap["mid"], h1)
    torch.testing.assert_close(net.head(tap["dense"]), out)
    tap["mid"].sum().backward()  # the graph is kept by default
    assert net.encoder.layer[0].dense.weight.grad is not None


def test_remove_stops_capturing_and_detach_option():
    net = _Net()
    tap = FeatureTap(net, {"h": "encoder.layer.0"}, detach=True)
    net(torch.randn(1, 4))
    assert not tap["h"].requires_grad
    tap.remove()
    net(torch.randn(1, 4))
    assert tap.outputs == {}
    tap.remove()  # idempotent


def test_custom_select():
    net = _Net()
    with FeatureTap(net, {"abs": "encoder.layer.0"}, select=lambda o: o[1]) as tap:
        net(torch.randn(3, 4))
    assert (tap["abs"] >= 0).all()


def test_bad_path_lists_nearby_names():
    net = _Net()
    with pytest.raises(ValueError, match=r"encoder\.layer\.1") as e:
        FeatureTap(net, {"h": "encoder.layers.1"})
    assert "encoder.layers.1" in str(e.value)
    # out-of-range index: the existing siblings are suggested
    with pytest.raises(ValueError, match=r"encoder\.layer\.2"):
        get_submodule(net, "encoder.layer.11")
    with pytest.raises(ValueError, match="top-level children"):
        get_submodule(net, "zzz")


def test_read_before_forward_and_unknown_name():
    tap = FeatureTap(_Net(), {"h": "head"})
    with pytest.raises(KeyError, match="has not fired"):
        tap["h"]
    with pytest.raises(KeyError, match="unknown tap"):
        tap["x"]
    tap.remove()


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        FeatureTap("net", {"h": "x"})
    with pytest.raises(ValueError, match="paths"):
        FeatureTap(_Net(), {})
