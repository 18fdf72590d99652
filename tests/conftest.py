"""Shared fixtures: tiny teachers and the built-in student's tokenizer, cheap enough for 2 CPUs.

* ``tiny_clip_spec``: a tiny open_clip architecture (``mad-tiny-clip``: ViT width 64, 2 layers,
  patch 8 on 32x32 images: a 4x4 grid; text width 64, context 32) registered with
  ``open_clip.add_model_config``, random weights saved to a ``.pt`` file; the value is the spec
  string ``"open_clip:mad-tiny-clip@<file>"`` a user would write for a real checkpoint.
* ``tiny_clip``: that teacher built through ``create_teacher`` (session-scoped; frozen, so safe
  to share).
* ``tiny_mlm_dir`` / ``tiny_mlm_spec``: a tiny ``RobertaForMaskedLM`` (hidden 32, 2 layers) with a
  byte-level BPE trained here, saved with ``save_pretrained``; spec ``"hf-mlm:<dir>"``.
  ``make_tiny_mlm``: the builder, for one on other texts (the teachers' tests).
* ``word_tokenizer``: :class:`~mad_distill.students.WordTokenizer` over :data:`CORPUS`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_CLIP_NAME = "mad-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}

#: texts the shared tokenizers are built on
CORPUS = [
    "is the cube red?",
    "is the ball blue?",
    "what colour is the small cylinder left of the cube?",
    "a man is riding a horse on the beach.",
    "two dogs play with a red ball in the park!",
    "how many spheres are there?",
]


def _register_tiny_clip(root: Path) -> None:
    import open_clip

    cfg_dir = root / "configs"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg_dir)


def save_tiny_clip(path: Path, seed: int = 0) -> str:
    """Random tiny CLIP weights (``seed``) saved at ``path``; returns the teacher spec string."""
    import open_clip

    _register_tiny_clip(path.parent)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    return f"open_clip:{TINY_CLIP_NAME}@{path}"


@pytest.fixture(scope="session")
def make_tiny_clip_spec():
    """``make(path, seed) -> spec``: another tiny CLIP checkpoint (e.g. a *different* teacher)."""
    return save_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "tiny_clip.pt", seed=0)


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_spec: str):
    from mad_distill.teachers import create_teacher

    return create_teacher(tiny_clip_spec)


def save_tiny_mlm(root: Path, corpus: list[str], vocab_size: int) -> Path:
    """A tiny ``RobertaForMaskedLM`` (hidden 32, 2 layers, seed 0) with a byte-level BPE of
    ``vocab_size`` trained on ``corpus``, saved with ``save_pretrained`` in ``root``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe.save_model(str(root))
    tok = RobertaTokenizerFast(
        vocab_file=str(root / "vocab.json"), merges_file=str(root / "merges.txt")
    )
    tok.model_max_length = 32
    tok.save_pretrained(root)
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    RobertaForMaskedLM(cfg).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def make_tiny_mlm():
    """``make(root, corpus, vocab_size) -> root``: another tiny MLM (e.g. on other texts)."""
    return save_tiny_mlm


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_mlm(tmp_path_factory.mktemp("tiny_mlm"), CORPUS * 4, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_mlm_spec(tiny_mlm_dir: Path) -> str:
    return f"hf-mlm:{tiny_mlm_dir}"


@pytest.fixture(scope="session")
def word_tokenizer():
    from mad_distill.students import WordTokenizer

    return WordTokenizer.build(CORPUS, max_length=24)
