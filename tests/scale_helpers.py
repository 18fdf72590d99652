"""Shared pieces of the scale/reliability tests (cache, precision, DDP, resume, bad inputs).

A tiny MAD student (the built-in student + MADMixin) and a keyed toy dataset whose batches carry
a :class:`MADBatch` with stable example keys, so the teacher-feature cache can serve them.
"""

from __future__ import annotations

import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mad_distill.mixin import MADMixin
from mad_distill.students import BuiltinVLStudent
from mad_distill.types import MADBatch

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")

TEXTS = [
    "is the cube red?",
    "is the ball blue?",
    "how many spheres are there?",
    "what colour is the small cylinder left of the cube?",
    "a man is riding a horse on the beach.",
    "two dogs play with a red ball in the park!",
]
CANDIDATES = ["yes", "no"]


class ToyData(Dataset):
    """``n`` examples ``(image [3, 32, 32], text, label, key)``, fixed by ``seed``."""

    def __init__(self, n: int = 12, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 32, 32, generator=g)
        self.texts = [TEXTS[i % len(TEXTS)] for i in range(n)]
        self.labels = torch.arange(n) % 2
        self.keys = [f"toy/{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        return self.images[i], self.texts[i], self.labels[i], self.keys[i]


def collate(items) -> dict:
    images, texts, labels, keys = zip(*items)
    images = torch.stack(images)
    labels = torch.stack(labels)
    mad = MADBatch(images, list(texts), labels=labels, candidates=CANDIDATES, keys=list(keys))
    return {"images": images, "texts": list(texts), "labels": labels, "mad": mad}


def mad_batches(data: ToyData, batch_size: int = 4) -> list[MADBatch]:
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return [b["mad"] for b in loader]


class TinyMAD(MADMixin, L.LightningModule):
    """The built-in student with MAD; records its training losses."""

    def __init__(
        self, config, tok, seed: int = 0, dropout: float = 0.0, lr: float = 1e-2, sgd: bool = False
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.tok, self.lr, self.sgd = tok, lr, sgd
        self.model = BuiltinVLStudent(
            len(tok),
            num_classes=2,
            image_size=32,
            patch_size=8,
            dim=32,
            heads=2,
            depth=2,
            max_text_len=24,
            dropout=dropout,
        )
        self.configure_mad(config, student_dim=self.model.hidden_dim)
        self.losses: list[float] = []

    def step(self, batch: dict) -> torch.Tensor:
        out = self.model(batch["images"], **self.tok(batch["texts"], device=self.device))
        task = F.cross_entropy(out.logits.float(), batch["labels"])
        return task + self.mad_loss(batch["mad"], out.tokens)

    def training_step(self, batch, _):
        loss = self.step(batch)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        if self.sgd:  # gradients differences stay differences (Adam turns noise into full steps)
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def trainer(**kw) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    args.update(kw)
    return L.Trainer(**args)
