"""Build a small BART student from scratch, offline: a byte-level BPE tokenizer trained on a few
texts and a random-init ``BartForConditionalGeneration`` from a ``BartConfig``, both saved to one
folder that ``from_pretrained`` loads — the same path a user's real BART checkpoint takes. Used by
the tests and the embedded-world benchmark, where no pretrained BART can be downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

#: BART's special tokens, in BART's id order (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3)
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def train_bpe_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 512
) -> BartTokenizerFast:
    """Train a byte-level BPE on ``texts`` and save it as a ``BartTokenizerFast`` in ``out_dir``.

    Args:
        texts: training sentences (at least one non-empty).
        out_dir: folder to write ``vocab.json``, ``merges.txt`` and the tokenizer config to.
        vocab_size: target vocabulary size (>= 261: 256 bytes + 5 special tokens).
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("train_bpe_tokenizer: texts has no non-empty sentence")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS)
    )
    bpe.save_model(str(out))
    tok = BartTokenizerFast(
        vocab_file=str(out / "vocab.json"),
        merges_file=str(out / "merges.txt"),
        add_prefix_space=True,
    )
    tok.save_pretrained(str(out))
    return tok


def build_bart(
    out_dir: str | os.PathLike,
    tokenizer: BartTokenizerFast,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    ffn_dim: int = 128,
    max_position_embeddings: int = 64,
    dropout: float = 0.1,
    seed: int = 0,
) -> Path:
    """Save a random-init BART sized for ``tokenizer`` (and the tokenizer) to ``out_dir``.

    Returns ``out_dir``, to pass to ``BartForConditionalGeneration.from_pretrained``.
    """
    cfg = BartConfig(
        vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_position_embeddings=max_position_embeddings,
        dropout=dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_bos_token_id=None,
        forced_eos_token_id=tokenizer.eos_token_id,
        scale_embedding=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BartForConditionalGeneration(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
