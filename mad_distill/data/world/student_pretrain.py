"""Task-agnostic VL pretraining of the built-in student (``mad-distill pretrain-student``).

The MAD / CLIP-TD students (ViLT, VisualBERT, UNITER, VL-BERT) are finetuned from a VL
pretraining on curated image–caption data; the teachers (CLIP) saw far more, and more varied,
web data. The embedded world mirrors that split: the world CLIP teacher is pretrained on images of
**every** domain (:mod:`mad_distill.data.world.pretrain`), while this module pretrains the
student's encoder on a smaller corpus of **one** domain by default (``flat``: the curated-data
analogue), with ViLT's two objectives (arXiv 2102.03334, §3.2):

- image–text matching (ITM): a binary head on the pooled token; per batch half the captions are
  true, a quarter are minimally edited ("hard") foils of the true caption and a quarter are
  another image's caption;
- masked language modelling (MLM): 15 % of the words of the true captions are replaced by
  ``[MASK]`` (80 %), a random word (10 %) or kept (10 %), and predicted from image and text.

The result is what a user's pretrained VL checkpoint is to the real tasks: the task head is new,
everything else starts from these weights. The checkpoint is a safetensors file of the
:class:`~mad_distill.students.BuiltinVLStudent` state without its task head, and a JSON beside it
with its SHA-256, the student's constructor arguments and its word vocabulary.

Deterministic: the data stream is a function of ``(seed, step)`` and the init of ``seed``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mad_distill._optim import decay_param_groups, warmup_cosine
from mad_distill.data.world.pretrain import _atomic_save, _metadata, pretrain_batch
from mad_distill.data.world.render import DOMAINS
from mad_distill.students import BuiltinVLStudent
from mad_distill.students.tokenizer import WordTokenizer

_ASSETS = Path(__file__).resolve().parents[2] / "students" / "assets"
#: the shipped pretrained student and its record (config, vocabulary, SHA-256)
WORLD_STUDENT_WEIGHTS = _ASSETS / "world_vl.safetensors"
#: model name written into the checkpoint metadata
WORLD_STUDENT_MODEL = "MAD-World-VL"
#: the student's input normalisation: ``(pixels in [0, 1] - 0.5) / 0.25``
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25
_CONFIG_KEYS = ("image_size", "patch_size", "dim", "depth", "heads", "mlp_ratio", "max_text_len")


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """Student input from ``[B, 3, H, W]`` pixels in ``[0, 1]``."""
    return (images - PIXEL_MEAN) / PIXEL_STD


def pretrain_vocabulary(seed: int, world_seed: int = 0, n_batches: int = 50) -> WordTokenizer:
    """The pretrained student's words: every task text (:func:`world_vocabulary`) plus the
    words of the first ``n_batches`` × 64 pretraining captions."""
    from mad_distill.data.world.datamodule import world_vocabulary

    texts = world_vocabulary(n_scenes=400, world_seed=world_seed)
    for step in range(n_batches):
        _, caps, foils, _ = pretrain_batch(seed, step, 64, size=24, domains=("flat",))
        texts += caps + foils
    return WordTokenizer.build(texts)


def _mask_words(
    ids: torch.Tensor, word_ids: torch.Tensor, tok: WordTokenizer, prob: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of word tokens: ``(masked ids, MLM targets with -100 elsewhere)``."""
    words = word_ids >= 0
    pick = (torch.rand(ids.shape, generator=gen) < prob) & words
    # at least one masked word per row with words, so every row teaches something
    none = ~pick.any(1) & words.any(1)
    if none.any():
        first = words.float().argmax(1)
        pick[none.nonzero().squeeze(1), first[none]] = True
    target = torch.where(pick, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=gen)
    rand_ids = torch.randint(5, len(tok), ids.shape, generator=gen)
    out = torch.where(pick & (r < 0.8), torch.full_like(ids, tok.mask_id), ids)
    out = torch.where(pick & (r >= 0.8) & (r < 0.9), rand_ids, out)
    return out, target


class _PretrainHeads(nn.Module):
    """ITM (2-way, on the pooled token) and MLM (over the word vocabulary) heads."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.itm = nn.Linear(dim, 2)
        self.mlm = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.mlm_out = nn.Linear(dim, vocab_size)


def _itm_texts(
    caps: list[str],
    foils: list[str],
    valid: np.ndarray,
    rng: np.random.Generator,
    foil_frac: float = 0.5,
) -> tuple[list[str], torch.Tensor]:
    """Half true captions; of the other half, ``foil_frac`` hard foils (the true caption where
    no foil differs) and the rest another image's caption; returns ``(texts, match [B])``."""
    b = len(caps)
    r = rng.random(b)
    kinds = np.where(r < 0.5, 0, np.where(r < 0.5 + 0.5 * foil_frac, 1, 2))
    texts, labels = [], []
    for i, k in enumerate(kinds):
        if k == 1 and valid[i]:
            texts.append(foils[i])
            labels.append(0)
        elif k == 2 and b > 1:
            j = (i + 1 + int(rng.integers(b - 1))) % b
            texts.append(caps[j])
            labels.append(int(caps[j] == caps[i]))
        else:
            texts.append(caps[i])
            labels.append(1)
    return texts, torch.tensor(labels)


class _PretrainStream(torch.utils.data.Dataset):
    """Step ``i``'s ``(images [B, 64, 64, 3] uint8, ITM texts, match [B])`` for ``steps`` steps:
    a map-style dataset so that DataLoader workers render steps ahead in order."""

    def __init__(
        self, seed: int, steps: int, batch_size: int, domains: tuple[str, ...], foil_frac: float
    ) -> None:
        self.seed, self.steps, self.batch_size = seed, steps, batch_size
        self.domains, self.foil_frac = domains, foil_frac

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        images, caps, foils, valid = pretrain_batch(
            self.seed, step, self.batch_size, 64, self.domains
        )
        rng = np.random.default_rng([11, self.seed, step])
        texts, match = _itm_texts(caps, foils, valid, rng, self.foil_frac)
        return torch.from_numpy(images), texts, match


def pretrain_student(
    out_path: str | os.PathLike,
    steps: int = 4000,
    seed: int = 1,
    batch_size: int = 128,
    domains: Sequence[str] = ("flat",),
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    patch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: int = 100,
    mlm_prob: float = 0.15,
    foil_frac: float = 0.5,
    mlm_weight: float = 0.1,
    threads: int | None = 1,
    log_every: int = 100,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> dict[str, Any]:
    """Pretrain the built-in student with ITM + MLM and save it (see the module docstring).

    Args:
        out_path: the ``.safetensors`` file to write (atomically); ``<stem>.json`` beside it gets
            the SHA-256, the student config, the vocabulary and these arguments.
        steps / batch_size: optimiser steps and image–caption pairs per step.
        seed: init and data stream seed (the teacher's stream uses seed 0; 1 keeps them apart).
        domains: image domains of the corpus (default ``flat`` only: narrower than the teacher's).
        dim / depth / heads / patch_size: the student (64 px images).
        lr / weight_decay / warmup: AdamW, linear warm-up then cosine decay to 0.
        mlm_prob: fraction of words masked.
        foil_frac: share of the ITM negatives that are hard foils (the rest: random captions).
        mlm_weight: weight of the MLM loss (ITM has weight 1).
        threads: ``torch.set_num_threads`` (None: leave as is).
        log_every: print the losses every this many steps (0: silent).
        device: where the student trains (``"cuda"`` on a GPU machine; the data is made on CPU).
        workers: processes that render the batches ahead (0: in the training loop). The stream
            is a function of ``(seed, step)``, so the result does not depend on it.

    Returns:
        A summary dict (sha256, final ITM accuracy / MLM accuracy over the last 50 steps, seconds).
    """
    from mad_distill.data.world.teacher import sha256_file, write_checksum

    for name, v, lo in (
        ("steps", steps, 1),
        ("batch_size", batch_size, 4),
        ("workers", workers, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if not 0 < mlm_prob < 1:
        raise ValueError(f"mlm_prob must be in (0, 1), got {mlm_prob!r}")
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"out_path must end with .safetensors, got {out_path}")
    domains = tuple(domains)
    if not domains or any(d not in DOMAINS for d in domains):
        raise ValueError(f"domains must be a non-empty subset of {list(DOMAINS)}, got {domains}")
    if threads is not None:
        torch.set_num_threads(threads)
    tok = pretrain_vocabulary(seed)
    config = {
        "image_size": 64,
        "patch_size": patch_size,
        "dim": dim,
        "depth": depth,
        "heads": heads,
        "mlp_ratio": 2.0,
        "max_text_len": 64,
    }
    torch.manual_seed(seed)
    device = torch.device(device)
    student = BuiltinVLStudent(len(tok), num_classes=2, dropout=0.1, **config).to(device)
    heads_ = _PretrainHeads(dim, len(tok)).to(device)
    params = list(student.named_parameters()) + list(heads_.named_parameters())
    opt = torch.optim.AdamW(decay_param_groups(params, weight_decay), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, steps))
    gen = torch.Generator().manual_seed(seed)
    student.train()
    heads_.train()
    t0 = time.time()
    hist: list[tuple[float, float, float]] = []
    stream = _PretrainStream(seed, steps, batch_size, domains, foil_frac)
    # its own generator: the loader's base-seed draw must not move the global (dropout) stream
    batches = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
    for step, (images, texts, match) in enumerate(batches):
        enc = tok(texts)
        # masking draws from one generator in step order, in this process
        ids, target = _mask_words(enc["input_ids"], enc["word_ids"], tok, mlm_prob, gen)
        target[match == 0] = -100  # MLM on true pairs only (ViLT)
        x = normalize_images(images.to(device).permute(0, 3, 1, 2).float() / 255.0)
        ids, target, match = ids.to(device), target.to(device), match.to(device)
        _, last, _ = student._encode(x, ids, enc["attention_mask"].to(device))
        pooled = student.pooler(last[:, 0])
        itm_logits = heads_.itm(pooled)
        itm = F.cross_entropy(itm_logits, match)
        n_text = ids.shape[1]
        mlm_logits = heads_.mlm_out(heads_.mlm(last[:, :n_text]))
        mlm = F.cross_entropy(mlm_logits.reshape(-1, len(tok)), target.reshape(-1))
        loss = itm + mlm_weight * mlm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            itm_acc = float((itm_logits.argmax(1) == match).float().mean())
            m = target != -100
            mlm_acc = float((mlm_logits.argmax(-1)[m] == target[m]).float().mean())
        hist.append((float(loss.detach()), itm_acc, mlm_acc))
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"step {step:5d}/{steps} loss {hist[-1][0]:.3f} itm acc {itm_acc:.3f} "
                f"mlm acc {mlm_acc:.3f} {time.time() - t0:.0f}s",
                flush=True,
            )
    student.eval()
    state = {
        k: v.detach().float().cpu().contiguous()
        for k, v in student.state_dict().items()
        if not k.startswith("head.")
    }
    args = {
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "domains": list(domains),
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "mlm_prob": mlm_prob,
        "foil_frac": foil_frac,
        "mlm_weight": mlm_weight,
        "patch_size": patch_size,
        "threads": threads,
        "device": device.type,
    }
    _atomic_save(state, out_path, _metadata(WORLD_STUDENT_MODEL, args))
    tail = np.array(hist[-50:])
    summary: dict[str, Any] = {
        "model": WORLD_STUDENT_MODEL,
        "sha256": sha256_file(out_path),
        "config": config,
        "vocab": tok.vocab,
        "args": args,
        "final": {
            "loss": round(float(tail[:, 0].mean()), 4),
            "itm_acc": round(float(tail[:, 1].mean()), 4),
            "mlm_acc": round(float(tail[:, 2].mean()), 4),
        },
        "seconds": round(time.time() - t0, 1),
    }
    write_checksum(out_path, summary)
    return summary


def load_pretrained_student(
    weights: str | os.PathLike = WORLD_STUDENT_WEIGHTS,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], WordTokenizer]:
    """``(state_dict without the task head, student config, tokenizer)`` of a checkpoint
    written by :func:`pretrain_student`, after checking its SHA-256.

    Raises:
        FileNotFoundError / ValueError: missing, corrupt or malformed files (named).
    """
    from safetensors.torch import load_file

    from mad_distill.data.world.teacher import checksum_path, verify_weights

    weights = Path(weights)
    verify_weights(weights)
    record = json.loads(checksum_path(weights).read_text())
    missing = [k for k in ("config", "vocab") if k not in record]
    if missing:
        raise ValueError(f"student record {checksum_path(weights)} lacks field(s) {missing}")
    config = {k: record["config"][k] for k in _CONFIG_KEYS}
    return load_file(str(weights)), config, WordTokenizer(record["vocab"])


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``mad-distill pretrain-student``."""
    p = parser or argparse.ArgumentParser(
        prog="mad-distill pretrain-student",
        description="VL-pretrain the built-in student on the embedded world (ITM + MLM).",
    )
    p.add_argument("--out", default="world_vl.safetensors", help="output .safetensors path")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--domains", nargs="+", default=["flat"], choices=list(DOMAINS))
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--foil-frac", type=float, default=0.5)
    p.add_argument("--mlm-weight", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=0, help="processes that render batches ahead")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = pretrain_student(
        args.out,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        domains=args.domains,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        patch_size=args.patch_size,
        foil_frac=args.foil_frac,
        mlm_weight=args.mlm_weight,
        lr=args.lr,
        threads=args.threads,
        device=args.device,
        workers=args.workers,
    )
    summary.pop("vocab")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
