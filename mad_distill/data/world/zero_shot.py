"""Zero-shot scoring of world task instances by a CLIP model (the teacher's confidence source).

Every instance comes with candidate texts and a group (class) per candidate. The CLIP logits of the
image against each candidate (``logit_scale · cos``) are reduced to class logits within each group
(default: log-mean-exp, so every class has the same prior whatever its number of candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from mad_distill.class_groups import group_class_logits, group_labels
from mad_distill.data.augment import augment_images, create_augmentation
from mad_distill.data.world.generator import generate_images, generate_scene, task_rng
from mad_distill.data.world.render import check_domain
from mad_distill.data.world.tasks import (
    _TASK_CODE,
    SNLI_CLASS_GROUPS,
    check_task,
    make_instance,
    num_classes,
)

#: how :func:`group_logits` reduces a class' candidates
GROUP_REDUCTIONS: tuple[str, ...] = ("max", "logsumexp", "mean")


def group_logits(logits: Tensor, groups: Tensor, num_classes: int, reduce: str = "mean") -> Tensor:
    """Class logits from candidate logits.

    Args:
        logits: ``[B, K]`` candidate logits.
        groups: ``[B, K]`` long, the class each candidate votes for, ``-1`` for padding.
        num_classes: ``C``.
        reduce: ``"mean"`` (default, log-mean-exp: a class' probability is the *mean* of its
            candidates', so a class is not favoured for having more candidates — e.g. SNLI-VE's
            contradiction, "any alternative value"; chosen on the world's *train* pool: SNLI-VE
            52.7 % vs 46.7 % max vs 40.0 % logsumexp with an early teacher checkpoint),
            ``"max"`` (the best-matching candidate) or ``"logsumexp"`` (the sum of the
            candidates' probabilities).

    Returns:
        ``[B, C]``; ``-inf`` for a class without candidates (``softmax`` gives it 0).
    """
    if reduce not in GROUP_REDUCTIONS:
        raise ValueError(f"reduce: unknown reduction {reduce!r}; known: {list(GROUP_REDUCTIONS)}")
    if logits.shape != groups.shape or logits.dim() != 2:
        raise ValueError(
            f"logits and groups must both be [B, K], got {tuple(logits.shape)} and "
            f"{tuple(groups.shape)}"
        )
    if groups.numel() and int(groups.max()) >= num_classes:
        raise ValueError(f"groups has class {int(groups.max())} >= num_classes={num_classes}")
    onehot = groups.unsqueeze(-1) == torch.arange(num_classes, device=groups.device)  # [B, K, C]
    masked = logits.unsqueeze(-1).masked_fill(~onehot, float("-inf"))
    if reduce == "max":
        return masked.amax(dim=1)
    out = masked.logsumexp(dim=1)
    if reduce == "mean":
        out = out - onehot.sum(dim=1).clamp_min(1).log()
    return out


def images_to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``uint8 [N, H, W, 3]`` → normalised ``float32 [N, 3, H, W]``; equal to open_clip's
    validation transform when ``H``, ``W`` already match the model's image size."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


class TextEmbedder:
    """Encodes texts with a CLIP text tower, caching each distinct string (prompts repeat)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, batch_size: int = 256):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._cache: dict[str, Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> Tensor:
        new = sorted({t for t in texts if t not in self._cache})
        for i in range(0, len(new), self.batch_size):
            chunk = new[i : i + self.batch_size]
            emb = self.model.encode_text(self.tokenizer(chunk), normalize=True)
            self._cache.update(zip(chunk, emb))
        return torch.stack([self._cache[t] for t in texts])


@torch.no_grad()
def candidate_logits(
    model: torch.nn.Module,
    embed: TextEmbedder,
    images: Tensor,
    candidates: Sequence[Sequence[str]],
) -> Tensor:
    """``[B, K]`` CLIP logits of each image against its own ``K`` candidate texts."""
    img = model.encode_image(images, normalize=True)  # [B, e]
    b, k = len(candidates), len(candidates[0])
    txt = embed([t for row in candidates for t in row]).view(b, k, -1)
    return model.logit_scale.exp() * torch.einsum("be,bke->bk", img, txt)


@torch.no_grad()
def zero_shot_accuracy(
    model: torch.nn.Module,
    tokenizer: Callable,
    task: str,
    domain: str,
    n: int = 500,
    world_seed: int = 0,
    split: str = "test",
    batch_size: int = 250,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    reduce: str = "mean",
    views: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Zero-shot accuracy (percent) of a CLIP model on the first ``n`` instances of a world split.

    ``views``: maps each batch of rendered ``uint8 [B, H, W, 3]`` images to the images the model
    sees (e.g. :func:`augmented_views`: how good a teacher is on the views it labels).

    Returns ``{"accuracy": ...}`` (VQA: the VQA soft score of the predicted answer; SNLI-VE:
    accuracy; VCR: Q→A) plus, for VCR, ``"qa2r"`` and ``"q2ar"``, for SNLI-VE ``"holds"`` (the
    accuracy of "the hypothesis holds" vs "it does not": the groups of
    :data:`~mad_distill.data.world.tasks.SNLI_CLASS_GROUPS`), and per-type accuracies
    ``"type/<qtype>"`` (SNLI-VE also ``"holds/<qtype>"``).
    """
    check_task(task)
    check_domain(domain)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if mean is None or std is None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean, std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    model.eval()
    embed = TextEmbedder(model, tokenizer)
    c = num_classes(task)
    correct: list[float] = []
    correct_r: list[float] = []
    correct_h: list[float] = []
    qtypes: list[str] = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        scenes = [generate_scene(world_seed, split, i) for i in idx]
        insts = [
            make_instance(task, s, task_rng(world_seed, split, _TASK_CODE[task], i))
            for s, i in zip(scenes, idx)
        ]
        raw = generate_images(world_seed, split, domain, idx, scenes=scenes)
        if views is not None:
            raw = views(raw)
        imgs = images_to_tensor(raw, mean, std)
        logits = candidate_logits(model, embed, imgs, [x.candidates for x in insts])
        groups = torch.tensor([x.groups for x in insts])
        class_logits = group_logits(logits, groups, c, reduce=reduce)
        pred = class_logits.argmax(-1).tolist()
        if task == "snli_ve":
            held = group_class_logits(class_logits, SNLI_CLASS_GROUPS).argmax(-1)
            truth = group_labels(torch.tensor([x.label for x in insts]), SNLI_CLASS_GROUPS)
            correct_h += (held == truth).float().tolist()
        for x, p in zip(insts, pred):
            qtypes.append(x.qtype)
            if task == "vqa":
                correct.append(float(x.scores[p]))
            else:
                correct.append(float(p == x.label))
        if task == "vcr":
            rl = candidate_logits(model, embed, imgs, [x.rationale_candidates for x in insts])
            correct_r += [
                float(p == x.rationale_label) for p, x in zip(rl.argmax(-1).tolist(), insts)
            ]
    out = {"accuracy": 100.0 * float(np.mean(correct))}
    if task == "snli_ve":
        out["holds"] = 100.0 * float(np.mean(correct_h))
    if task == "vcr":
        out["qa2r"] = 100.0 * float(np.mean(correct_r))
        out["q2ar"] = 100.0 * float(np.mean(np.array(correct) * np.array(correct_r)))
    for q in sorted(set(qtypes)):
        sel = [v for v, t in zip(correct, qtypes) if t == q]
        out[f"type/{q}"] = 100.0 * float(np.mean(sel))
        if task == "snli_ve":
            sel = [v for v, t in zip(correct_h, qtypes) if t == q]
            out[f"holds/{q}"] = 100.0 * float(np.mean(sel))
    return out


def augmented_views(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """``views`` for :func:`zero_shot_accuracy`: each image through the bench's augmentation
    ``kind`` (e.g. ``"augmix"``; :mod:`mad_distill.data.augment`), as the world runner's
    teachers see them; randomness from torch's global generator."""
    policy = create_augmentation(kind)

    def views(raw: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(255.0)
        return augment_images(pixels, policy).permute(0, 2, 3, 1).numpy()

    return views


def chance_accuracy(task: str) -> float:
    """Accuracy (percent) of a uniform guess, for reference. VQA: a guess among the answers the
    question type admits (6 colours, 4 counts, 4 shapes, yes/no, 2 sizes), question types equally
    likely — not among all 18 answers, which would understate chance."""
    check_task(task)
    if task == "vqa":
        return 100.0 * float(np.mean([1 / 6, 1 / 4, 1 / 4, 1 / 2, 1 / 2]))
    return {"snli_ve": 100.0 / 3, "vcr": 25.0}[task]


@torch.no_grad()
def teacher_class_logits(teacher, mad, num_classes: int, reduce: str = "mean") -> Tensor:
    """``[B, C]`` zero-shot class logits of a :class:`~mad_distill.teachers.OpenCLIPTeacher` on a
    :class:`~mad_distill.types.MADBatch`: candidate logits from ``teacher.zero_shot_logits``,
    reduced by ``mad.extra["candidate_groups"]`` when present (:func:`group_logits`)."""
    pooled = teacher.encode_image(mad.teacher_images).pooled
    logits = teacher.zero_shot_logits(pooled, mad.candidates)
    groups = mad.extra.get("candidate_groups") if mad.extra else None
    if groups is None:
        return logits
    return group_logits(logits, groups.to(logits.device), num_classes, reduce=reduce)


def zero_shot_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table of :func:`mad_distill.data.world.pretrain.evaluate_zero_shot` results."""
    domains = list(next(iter(results.values())))
    lines = [
        "| task | metric | chance | " + " | ".join(domains) + " |",
        "|---|---|---|" + "---|" * len(domains),
    ]
    for task, per_domain in results.items():
        extra = ("qa2r", "q2ar", "holds")
        metrics = ["accuracy"] + [k for k in extra if k in per_domain[domains[0]]]
        for m in metrics:
            name = (
                {"vqa": "VQA acc", "snli_ve": "acc", "vcr": "Q→A"}[task]
                if m == "accuracy"
                else {"qa2r": "QA→R", "q2ar": "Q→AR", "holds": "holds (E∪N vs C)"}[m]
            )
            # "holds": a uniform guess between the two groups
            chance = {"qa2r": 25.0, "q2ar": 6.25, "holds": 50.0}.get(m, chance_accuracy(task))
            row = " | ".join(f"{per_domain[d][m]:.1f}" for d in domains)
            lines.append(f"| {task} | {name} | {chance:.1f} | {row} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``mad-distill zero-shot [--weights W] [--n N] [--split S] [--augment KIND]``: the
    teacher's zero-shot accuracy per task and domain on the first ``N`` items of a split."""
    import argparse
    import json

    from mad_distill.data.world.pretrain import evaluate_zero_shot
    from mad_distill.data.world.teacher import WORLD_CLIP_WEIGHTS, load_world_clip

    p = argparse.ArgumentParser(
        prog="mad-distill zero-shot",
        description="Zero-shot accuracy of the world CLIP teacher per task and domain.",
    )
    p.add_argument("--weights", default=str(WORLD_CLIP_WEIGHTS))
    p.add_argument("--n", type=int, default=1000, help="test items per task and domain")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--split", choices=["test", "train"], default="test", help="the items' split")
    p.add_argument(
        "--augment",
        default=None,
        help="score the teacher on augmented views of the images (augmix, randaugment, "
        "trivialaugment), as the bench's teachers label them",
    )
    p.add_argument("--seed", type=int, default=0, help="torch seed of the augmentation")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    views = None
    if args.augment is not None:
        torch.manual_seed(args.seed)
        views = augmented_views(args.augment)
    model, _, tokenizer = load_world_clip(args.weights)
    results = evaluate_zero_shot(model, tokenizer, n=args.n, split=args.split, views=views)
    print(zero_shot_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
