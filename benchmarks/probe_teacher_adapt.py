"""Probe: does fitting the world teacher's zero-shot head on the labelled items make it better?

On the teacher's frozen embeddings (pooled image, candidate texts) of the 1 % / 5 % labelled
items of seed 0 (the bench's nested splits), fit (a) a per-class logit bias, (b) a residual
scorer on ``[image, text, image * text]`` per candidate, (c) a CLIP-Adapter-style residual MLP
on the image embedding, and print train / test accuracy (1 000 test items per domain) against
zero-shot. Result in benchmarks/world_tuning.md (session 8).

    python benchmarks/probe_teacher_adapt.py vqa snli_ve   # about 2 min on one core
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mad_distill.bench.world import _train_indices
from mad_distill.data.world.datamodule import WorldTaskDataset
from mad_distill.data.world.tasks import num_classes
from mad_distill.data.world.teacher import load_world_clip
from mad_distill.data.world.zero_shot import TextEmbedder, group_logits, images_to_tensor


@torch.no_grad()
def embeddings(model, embed, task: str, split: str, domain: str, idx: list[int]):
    """``(image [N, e], candidate texts [N, K, e], groups [N, K], targets)``."""
    pp = model.visual.preprocess_cfg
    ds = WorldTaskDataset(task, domain, idx, split=split, teacher_images=False)
    out = []
    for s in range(0, len(ds), 250):
        pos = list(range(s, min(s + 250, len(ds))))
        insts = [ds.instances[p] for p in pos]
        pixels = images_to_tensor(ds.images(pos), pp["mean"], pp["std"])
        img = model.encode_image(pixels, normalize=True)
        txt = embed([t for x in insts for t in x.candidates]).view(len(pos), -1, img.shape[-1])
        groups = torch.tensor([x.groups for x in insts])
        if task == "vqa":  # soft VQA scores
            y = torch.tensor(np.stack([x.scores for x in insts])).float()
        else:
            y = torch.tensor([x.label for x in insts])
        out.append((img, txt, groups, y))
    return [torch.cat(z) for z in zip(*out)]


class Head(nn.Module):
    """Zero-shot candidate logits plus a learned correction (zero at init)."""

    def __init__(self, kind: str, dim: int, n_cls: int, scale: float, hidden: int = 64):
        super().__init__()
        self.kind, self.scale = kind, scale
        self.bias = nn.Parameter(torch.zeros(n_cls))
        width = {"pair": (3 * dim, 1), "image": (dim, dim)}.get(kind)
        self.mlp = None
        if width is not None:
            self.mlp = nn.Sequential(
                nn.Linear(width[0], hidden), nn.GELU(), nn.Linear(hidden, width[1])
            )
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, img, txt, groups):
        if self.kind == "image":
            img = F.normalize(img + self.mlp(img), dim=-1)
        cand = self.scale * torch.einsum("be,bke->bk", img, txt)
        if self.kind == "pair":
            i = img[:, None].expand_as(txt)
            cand = cand + self.mlp(torch.cat([i, txt, i * txt], -1)).squeeze(-1)
        out = group_logits(cand, groups, self.bias.numel())
        out = torch.where(torch.isfinite(out), out, torch.full_like(out, -1e4))
        return out + self.bias if self.kind == "bias" else out


def accuracy(task: str, head: Head, data) -> float:
    img, txt, groups, y = data
    with torch.no_grad():
        pred = head(img, txt, groups).argmax(-1)
    if task == "vqa":
        return 100 * y.gather(1, pred[:, None]).mean().item()
    return 100 * (pred == y).float().mean().item()


def fit(task: str, head: Head, data, steps: int, lr: float) -> Head:
    img, txt, groups, y = data
    n_cls = head.bias.numel()
    target = y / y.sum(1, keepdim=True).clamp(min=1e-6) if task == "vqa" else F.one_hot(y, n_cls)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    for _ in range(steps):
        loss = -(target * F.log_softmax(head(img, txt, groups), -1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def main(tasks: list[str]) -> None:
    torch.set_num_threads(1)
    model, _, tokenizer = load_world_clip()
    model.eval()
    embed = TextEmbedder(model, tokenizer)
    scale, dim = model.logit_scale.exp().item(), model.text_projection.shape[-1]
    for task in tasks:
        c = num_classes(task)
        test = {
            d: embeddings(model, embed, task, "test", d, list(range(1000)))
            for d in ("flat", "textured")
        }
        zero = Head("zero-shot", dim, c, scale)
        print(task, "zero-shot", {d: round(accuracy(task, zero, v), 1) for d, v in test.items()})
        for frac in (0.01, 0.05):
            train = embeddings(
                model,
                embed,
                task,
                "train",
                "flat",
                list(_train_indices(task, frac, 0, 10_000, 0, "q2a")),
            )
            for kind, steps, lr in (
                ("bias", 50, 0.05),
                ("bias", 200, 0.05),
                ("pair", 100, 3e-3),
                ("pair", 300, 3e-3),
                ("image", 100, 3e-3),
                ("image", 300, 3e-3),
            ):
                torch.manual_seed(0)
                head = fit(task, Head(kind, dim, c, scale), train, steps, lr)
                row = {d: round(accuracy(task, head, v), 1) for d, v in test.items()}
                fitted = accuracy(task, head, train)
                print(
                    f"  {frac:g} {kind} {steps} steps: train {fitted:.1f}, test {row}", flush=True
                )


if __name__ == "__main__":
    main(sys.argv[1:] or ["vqa", "snli_ve"])
