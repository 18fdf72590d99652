"""Fixtures for the VLKD tests: a tiny BART (byte-level BPE trained here, random-init weights,
saved and loaded with ``from_pretrained``) and a tiny random-init open_clip CLIP teacher built
from a custom model config."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from torch import Tensor, nn

from mad_distill.types import TeacherImageOutput, TeacherTextOutput
from mad_distill.vlkd.plm import build_bart, train_bpe_tokenizer

CAPTIONS = [
    "a small red circle left of a large blue square",
    "a large green triangle above a small yellow cross",
    "a purple square below a cyan circle",
    "two red crosses and one green circle",
    "question: what colour is the circle? answer: red",
    "question: how many squares are there? answer: two",
    "a blue triangle in the top left",
    "a yellow circle right of a purple triangle",
]

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class TinyCLIPTeacher(nn.Module):
    """A frozen open_clip model exposing the pooled outputs VLKD reads."""

    def __init__(self, model: nn.Module, tokenizer) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.requires_grad_(False)
        self.eval()

    @property
    def embed_dim(self) -> int:
        return TINY_CLIP["embed_dim"]

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> TeacherImageOutput:
        pooled = self.model.encode_image(images)
        return TeacherImageOutput(tokens=pooled[:, None], grid=(1, 1), pooled=pooled)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> TeacherTextOutput:
        ids = self.tokenizer(texts).to(next(self.model.parameters()).device)
        pooled = self.model.encode_text(ids)
        mask = ids != 0
        return TeacherTextOutput(
            tokens=pooled[:, None],
            mask=mask[:, :1],
            word_ids=torch.zeros_like(ids[:, :1]),
            pooled=pooled,
        )


@pytest.fixture(scope="session")
def bart_dir(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tiny_bart")
    tok = train_bpe_tokenizer(CAPTIONS * 4, path, vocab_size=320)
    build_bart(path, tok, d_model=32, layers=1, heads=2, ffn_dim=64, dropout=0.0, seed=0)
    return path


@pytest.fixture(scope="session")
def clip_teacher(tmp_path_factory):
    cfg_dir = tmp_path_factory.mktemp("clip_cfg")
    (cfg_dir / "vlkd-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("vlkd-test-tiny-clip")
    return TinyCLIPTeacher(model, open_clip.get_tokenizer("vlkd-test-tiny-clip"))


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g)


@pytest.fixture
def captions():
    return list(CAPTIONS)


@pytest.fixture(scope="session")
def project_clip_teacher(clip_teacher):
    """The same tiny open_clip model through the project's ``OpenCLIPTeacher``."""
    from mad_distill.teachers import OpenCLIPTeacher

    return OpenCLIPTeacher(clip_teacher.model, tokenizer=clip_teacher.tokenizer, name="tiny")
