"""Contrastive pretraining of the world's CLIP teacher (``mad-distill pretrain-teacher``).

Stands in for CLIP's web-scale pretraining: a small open_clip ``CLIP`` (custom model config
``MAD-World-CLIP``: ViT with 8 px patches on 64 px images, a 3-layer text transformer with the
default open_clip tokenizer) is trained with open_clip's :class:`~open_clip.ClipLoss` (CLIP,
arXiv 2103.00020, §2.3) on a stream of world images from **all** domains with randomly styled
captions. The stream comes from the ``pretrain`` split, whose random streams are disjoint from the
task pools (:mod:`mad_distill.data.world.generator`).

Our addition (documented default, ``hard_negative_weight``): each image also gets a caption of a
minimally edited scene (one object recoloured / reshaped / resized / moved, captioned with the
same random choices), and a binary cross-entropy term pushes the true caption
above it — NegCLIP's hard negatives (Yuksekgonul et al., ICLR 2023), which teach attribute binding,
counts and relations that plain in-batch negatives rarely contrast.

Deterministic: the data stream is a function of ``(seed, step)`` and the model init of ``seed``;
with the same ``threads`` the same weights come out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mad_distill._io import atomic_write
from mad_distill._optim import decay_param_groups, warmup_cosine
from mad_distill.data.world.generator import style_rng
from mad_distill.data.world.render import DOMAINS, render
from mad_distill.data.world.scene import perturb_scene, random_caption, sample_scene
from mad_distill.data.world.tasks import TASKS
from mad_distill.data.world.zero_shot import images_to_tensor, zero_shot_accuracy

#: open_clip model name of the world teacher (registered from the JSON in teachers/assets)
WORLD_CLIP_MODEL = "MAD-World-CLIP"
_ASSETS = Path(__file__).resolve().parents[2] / "teachers" / "assets"
MODEL_CONFIG_PATH = _ASSETS / f"{WORLD_CLIP_MODEL}.json"
_NS_PRETRAIN = 7


def register_model_config() -> str:
    """Register ``MAD-World-CLIP`` with open_clip (idempotent); returns the model name."""
    import open_clip

    if WORLD_CLIP_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_PATH)
    return WORLD_CLIP_MODEL


def pretrain_batch(
    seed: int,
    step: int,
    batch_size: int,
    size: int = 64,
    domains: Sequence[str] = DOMAINS,
) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """One pretraining batch: ``uint8`` images ``[B, H, W, 3]`` (domains drawn uniformly from
    ``domains``), captions, hard-negative captions, and a bool mask of the hard negatives that
    differ."""
    domains = tuple(domains)
    if not domains or any(d not in DOMAINS for d in domains):
        raise ValueError(f"domains must be a non-empty subset of {list(DOMAINS)}, got {domains}")
    rng = np.random.default_rng([_NS_PRETRAIN, seed, step])
    scenes, caps, foils, valid, rngs, drawn = [], [], [], [], [], []
    seen: set[str] = set()
    for i in range(batch_size):
        for _ in range(4):  # redraw duplicate captions: an identical text is a false negative
            scene = sample_scene(rng)
            state = rng.bit_generator.state
            cap = random_caption(scene, rng)
            if cap not in seen:
                break
        seen.add(cap)
        foil = cap
        for _ in range(3):
            edited = perturb_scene(scene, rng, structural=False)
            r2 = np.random.default_rng()
            r2.bit_generator.state = state  # the same caption choices on the edited scene
            foil = random_caption(edited, r2)
            if foil != cap:
                break
        scenes.append(scene)
        caps.append(cap)
        foils.append(foil)
        valid.append(foil != cap)
        domain = domains[int(rng.integers(len(domains)))]
        drawn.append(domain)
        # style streams of the pretrain split: keyed by (seed, step * batch + i)
        rngs.append(style_rng(seed, "pretrain", domain, step * batch_size + i))
    images = np.empty((batch_size, size, size, 3), np.uint8)
    for d in DOMAINS:
        sel = [i for i, dd in enumerate(drawn) if dd == d]
        if sel:
            images[sel] = render([scenes[i] for i in sel], d, [rngs[i] for i in sel], size=size)
    return images, caps, foils, np.array(valid)


def _metadata(name: str, args: dict) -> dict[str, str]:
    # one key only: safetensors writes metadata in hash-map order, so several keys would make
    # the file's bytes (and its SHA-256) differ between identical runs
    return {"mad_distill": json.dumps({"model": name, "args": args}, sort_keys=True)}


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def pretrain_teacher(
    out_path: str | os.PathLike,
    steps: int = 3000,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 50,
    hard_negative_weight: float = 1.0,
    threads: int | None = 2,
    precision: str = "fp16",
    log_every: int = 50,
    eval_n: int = 0,
    checkpoint_every: int = 0,
    init: str | os.PathLike | None = None,
    step_offset: int | None = None,
) -> dict:
    """Pretrain the world CLIP teacher and save it (safetensors) + a SHA-256 JSON beside it.

    Args:
        out_path: the ``.safetensors`` file to write (atomically); ``<stem>.json`` gets the
            SHA-256, the model name and these arguments.
        steps: optimiser steps; batch_size: images per step.
        seed: model init and data stream seed.
        lr / weight_decay / warmup: AdamW, linear warm-up then cosine decay to 0.
        hard_negative_weight: weight of the NegCLIP-style hard-negative term (0 disables it).
        threads: ``torch.set_num_threads`` (None: leave as is). Results are reproducible for a
            fixed thread count; the shipped weights were made with the default, 2.
        precision: ``"fp16"`` or ``"fp32"`` for the saved weights (training is fp32).
        log_every: print the loss every this many steps (0: silent).
        eval_n: if > 0, report zero-shot accuracy on ``eval_n`` test instances per task × domain.
        checkpoint_every: if > 0, also save ``<stem>.step<N>.safetensors`` every N steps (for
            watching a long run; the final file is what counts).
        init: continue from these teacher weights (a file written by this function, SHA-256
            checked against its JSON) instead of a fresh init: a warm restart with a fresh
            optimiser and a new warm-up + cosine schedule over ``steps``.
        step_offset: first step of the data stream (``None``: the ``init`` file's recorded
            total steps, so a continued run sees new batches; 0 without ``init``).

    Returns:
        A summary dict (path, sha256, final loss, seconds, zero-shot accuracies if evaluated).
    """
    import open_clip

    from mad_distill.data.world.teacher import sha256_file

    for name, v, lo in (("steps", steps, 1), ("batch_size", batch_size, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r}")
    if step_offset is not None and (
        isinstance(step_offset, bool) or not isinstance(step_offset, int) or step_offset < 0
    ):
        raise ValueError(f"step_offset must be an int >= 0, got {step_offset!r}")
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"out_path must end with .safetensors, got {out_path}")
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    name = register_model_config()
    model, _, _ = open_clip.create_model_and_transforms(name)
    init_steps = 0
    if init is not None:
        init_steps = _load_init(model, Path(init))
    offset = init_steps if step_offset is None else step_offset
    pp = model.visual.preprocess_cfg
    tokenizer = open_clip.get_tokenizer(name)
    size = (
        model.visual.image_size[0]
        if isinstance(model.visual.image_size, tuple)
        else int(model.visual.image_size)
    )
    opt = torch.optim.AdamW(
        decay_param_groups(model.named_parameters(), weight_decay, embedding_key="embedding"),
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, steps))
    clip_loss = open_clip.ClipLoss()
    model.train()
    t0 = time.time()
    loss_val = float("nan")
    for step in range(steps):
        images, caps, foils, valid = pretrain_batch(seed, offset + step, batch_size, size)
        x = images_to_tensor(images, pp["mean"], pp["std"])
        tokens = tokenizer(caps + foils)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp()
        loss = clip_loss(img, txt[:batch_size], scale)
        if hard_negative_weight > 0 and valid.any():
            pos = (img * txt[:batch_size]).sum(-1)
            neg = (img * txt[batch_size:]).sum(-1)
            m = torch.from_numpy(valid)
            hn = F.softplus(scale * (neg - pos))[m].mean()
            loss = loss + hard_negative_weight * hn
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        loss_val = float(loss.detach())
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            ckpt = out_path.with_name(f"{out_path.stem}.step{step + 1}.safetensors")
            _atomic_save(
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                ckpt,
                _metadata(name, {"step": step + 1}),
            )
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"step {step:5d}/{steps} loss {loss_val:.4f} scale {float(scale.detach()):.1f} "
                f"{time.time() - t0:.0f}s",
                flush=True,
            )
    model.eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    args = {
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "hard_negative_weight": hard_negative_weight,
        "threads": threads,
        "precision": precision,
    }
    if init is not None:
        # what the weights are the product of: the init's own run, then this one
        args.update(init=Path(init).name, step_offset=offset, total_steps=init_steps + steps)
    _atomic_save(state, out_path, _metadata(name, args))
    summary: dict = {
        "path": str(out_path),
        "model": name,
        "sha256": sha256_file(out_path),
        "final_loss": loss_val,
        "seconds": round(time.time() - t0, 1),
        "args": args,
    }
    if eval_n > 0:
        summary["zero_shot"] = evaluate_zero_shot(model, tokenizer, n=eval_n)
    from mad_distill.data.world.teacher import write_checksum

    write_checksum(out_path, summary)
    return summary


def _load_init(model: torch.nn.Module, path: Path) -> int:
    """Load checked teacher weights into ``model`` (fp32); returns their total training steps."""
    from safetensors import safe_open

    from mad_distill.data.world.teacher import verify_weights

    verify_weights(path)
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("mad_distill", "{}"))
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"init weights {path} do not fit {WORLD_CLIP_MODEL}: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    args = meta.get("args", {})
    return int(args.get("total_steps", args.get("steps", 0)))


def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenizer,
    n: int = 500,
    world_seed: int = 0,
    split: str = "test",
    views=None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {domain: metrics}}`` zero-shot accuracies on the first ``n`` instances of
    ``split`` (``views``: see :func:`~mad_distill.data.world.zero_shot.zero_shot_accuracy`)."""
    pp = getattr(model.visual, "preprocess_cfg", {})
    kw = {"mean": pp.get("mean"), "std": pp.get("std")} if pp else {}
    kw.update(n=n, world_seed=world_seed, split=split, views=views)
    return {
        task: {d: zero_shot_accuracy(model, tokenizer, task, d, **kw) for d in DOMAINS}
        for task in TASKS
    }


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``mad-distill pretrain-teacher``."""
    p = parser or argparse.ArgumentParser(
        prog="mad-distill pretrain-teacher",
        description="Pretrain the embedded world's CLIP teacher (deterministic).",
    )
    p.add_argument("--out", default="world_clip.safetensors", help="output .safetensors path")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hard-negative-weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--eval-n", type=int, default=500, help="test instances per task × domain")
    p.add_argument(
        "--init",
        default=None,
        help="continue from these teacher weights (warm restart: fresh optimiser and schedule)",
    )
    p.add_argument(
        "--step-offset",
        type=int,
        default=None,
        help="first step of the data stream (default: the --init file's total steps, else 0)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = pretrain_teacher(
        args.out,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        hard_negative_weight=args.hard_negative_weight,
        threads=args.threads,
        precision=args.precision,
        eval_n=args.eval_n,
        init=args.init,
        step_offset=args.step_offset,
    )
    print(json.dumps(summary, indent=2))
    return 0
