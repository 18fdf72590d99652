"""Tiny local models and configs for the example finetunes (random weights, saved and reloaded).

* ``tiny_vilt_dir``: a 2-layer ``ViltModel`` (hidden 32, 32x32 images, patch 8: a 4x4 grid) with
  a WordPiece tokenizer over the fixture texts and a ``ViltImageProcessor``, written with
  ``save_pretrained`` -- the layout of a downloaded ``dandelin/vilt-b32-mlm``.
* ``example_config(task, student, tmp_path, **overrides)``: the shipped YAML of
  ``examples/configs/<task>_<student>.yaml`` with its data paths pointed at ``tests/fixtures``,
  its weights at the tiny models, tiny sizes and a few-step trainer; written to ``tmp_path``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mad_distill.align import split_words

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CONFIGS = ROOT / "examples" / "configs"


def _fixture_words() -> list[str]:
    """Lower-cased words of every fixture text (questions, hypotheses, VCR tokens)."""
    words: set[str] = set()
    for path in FIXTURES.rglob("*.json*"):
        if "broken" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        words.update(text[s:e].lower() for s, e in split_words(text))
    words.update(["casey", "riley", "jessie", "jackie", "avery", "jaime", "and"])
    return sorted(w for w in words if w.isalnum() or len(w) == 1)


def save_tiny_vilt(root: Path, seed: int = 0) -> Path:
    from transformers import BertTokenizerFast, ViltConfig, ViltImageProcessor, ViltModel

    root.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + [w for w in _fixture_words() if w not in specials]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(root)
    torch.manual_seed(seed)
    cfg = ViltConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=40,
    )
    ViltModel(cfg).save_pretrained(root)
    ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_vilt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vilt(tmp_path_factory.mktemp("tiny_vilt") / "vilt")


_DATA = {
    "vqa": {
        "train_questions": "vqa/v2_OpenEnded_mscoco_train2014_questions.json",
        "train_annotations": "vqa/v2_mscoco_train2014_annotations.json",
        "train_images": "vqa/train2014",
        "val_questions": "vqa/v2_OpenEnded_mscoco_val2014_questions.json",
        "val_annotations": "vqa/v2_mscoco_val2014_annotations.json",
        "val_images": "vqa/val2014",
    },
    "snli_ve": {
        "train": "snli_ve/snli_ve_train.jsonl",
        "val": "snli_ve/snli_ve_dev.jsonl",
        "image_dir": "snli_ve/flickr30k-images",
    },
    "vcr": {
        "train": "vcr/vcr1annots/train.jsonl",
        "val": "vcr/vcr1annots/val.jsonl",
        "image_dir": "vcr/vcr1images",
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture
def example_config(tiny_vilt_dir: Path, tiny_clip_spec: str, tiny_mlm_spec: str):
    def make(task: str, student: str, tmp_path: Path, **overrides: Any) -> Path:
        cfg = yaml.safe_load((CONFIGS / f"{task}_{student}.yaml").read_text())
        # every path of the shipped config is replaced: data -> fixtures, weights -> tiny models
        data = {k: str(FIXTURES / v) for k, v in _DATA[task].items()}
        data.update(batch_size=2, num_workers=0)
        if "answer_vocab" in cfg["data"]["init_args"]:
            data["answer_vocab"] = str(tmp_path / "answer_vocab.json")
        cfg["data"]["init_args"].update(data)
        s_args = cfg["model"]["init_args"]["student"]["init_args"]
        if student == "vilt":
            s_args.update(model_path=str(tiny_vilt_dir), tap="encoder.layer.1", image_size=32)
        else:
            s_args.update(
                tokenizer=str(tiny_vilt_dir), image_size=32, patch_size=8, dim=32, depth=2,
                heads=2, dropout=0.0,
            )  # fmt: skip
        mad = cfg["model"]["init_args"]["mad"]
        mad["teachers"] = {"clip": tiny_clip_spec, "text": tiny_mlm_spec.replace("hf-mlm:", "hf:")}
        mad["kernels"] = "reference"
        cfg["trainer"] = {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "max_steps": 3,
            "limit_val_batches": 2,
            "val_check_interval": 3,  # validate after the last step (an epoch is longer)
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True},
                }
            ],
        }
        cfg = _merge(cfg, overrides)
        path = tmp_path / f"{task}_{student}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return make
