import math

import pytest
import torch
from torch import nn

from mad_distill._optim import decay_param_groups, warmup_cosine


def test_warmup_cosine_shape():
    f = warmup_cosine(4, 20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(12) == pytest.approx(0.5)  # halfway through the cosine
    assert f(20) == pytest.approx(0.0, abs=1e-12)
    assert f(25) == f(20)  # held at 0 after the end
    assert all(f(s) >= f(s + 1) for s in range(4, 25))


def test_warmup_cosine_without_warmup():
    f = warmup_cosine(0, 10)
    assert f(0) == 1.0
    assert f(5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_decay_param_groups_split():
    model = nn.Sequential()
    model.add_module("token_embed", nn.Embedding(5, 3))
    model.add_module("proj", nn.Linear(3, 3))
    model.add_module("norm", nn.LayerNorm(3))
    decay, other = decay_param_groups(model.named_parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 3])]
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in other["params"]) == [
        "norm.bias",
        "norm.weight",
        "proj.bias",
        "token_embed.weight",
    ]
