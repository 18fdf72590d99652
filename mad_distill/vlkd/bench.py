"""VLKD on the embedded world (``mad-distill vlkd``): distil the world's CLIP teacher into a small
BART and measure what the paper claims (arXiv 2203.06386, abstract): zero-shot VQA by generation,
and text ability kept.

No pretrained BART exists offline, so the "PLM" is built here, honestly small:

1. **Text pretraining** (no images): a byte-level BPE and a random-init BART are trained by BART
   text infilling on a text-only corpus about *other* scenes of the world (the ``pretrain`` split):
   captions, and question-answer texts in the prompt's format followed by the scene's full
   caption (``text_corpus="captions+qa+context"``, default: reading comprehension, so the PLM
   can answer from a description in its input, as a real BART can), or without it
   (``"captions+qa"``) — standing in for the web text a real BART has read. This is the
   undistilled PLM.
2. **VLKD** (image-caption pairs of the ``train`` split): the PLM, loaded with ``from_pretrained``,
   is distilled from the frozen CLIP with every objective (``full``) and with each one left out.
3. **Evaluation** (``test`` split, unseen scenes): zero-shot VQA accuracy (VQA soft score over the
   10 simulated annotators, exact match after normalisation) with the prompt
   ``"question: {question} answer: <mask>"``; the text-only infilling loss on held-out captions
   and on held-out QA texts (text ability, the QA texts being text VLKD never trains on); the
   image-conditioned infilling loss on held-out pairs; and, as a reference, the
   CLIP teacher's own zero-shot VQA by ranking the world's candidate prompts.

Writes ``vlkd.json`` and ``vlkd.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, BartForConditionalGeneration

from mad_distill._io import atomic_write_text
from mad_distill.vlkd.module import CLIPLikeTeacher, VLKDBatch, VLKDConfig, VLKDModule
from mad_distill.vlkd.objectives import OBJECTIVES, image_conditioned_infilling, span_mask
from mad_distill.vlkd.plm import build_bart, train_bpe_tokenizer
from mad_distill.vlkd.zero_shot import ZeroShotVQA, vqa_accuracy

#: ablation name -> (active objectives, student parts frozen; None = the config's ``freeze``)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "full": (OBJECTIVES, None),
    "no_ttdm": (("itc", "icti"), None),
    "no_itc": (("ttdm", "icti"), None),
    "no_icti": (("ttdm", "itc"), None),
    "icti_only": (("icti",), None),
    "full_train_decoder": (OBJECTIVES, ()),
}
TEXT_CORPORA: tuple[str, ...] = ("captions", "captions+qa", "captions+qa+context")
TEMPLATE = "question: {question} answer: {mask}."
_CAPTION_NS = 7101  # our own random-stream namespace for captions (the world's use 1-3)


@dataclass
class VLKDBenchConfig:
    """Settings of the world benchmark (defaults: a few minutes on 2 CPU cores).

    Args:
        teacher: teacher spec for :func:`mad_distill.teachers.create_teacher` (default the
            shipped ``world-clip``), or a teacher object.
        world_seed / domain / image_size: which world images.
        text_corpus: ``"captions"``, ``"captions+qa"`` or ``"captions+qa+context"`` (default).
        n_text: scenes of the text-only pretraining corpus (one caption each, plus one QA text
            each unless ``text_corpus="captions"``).
        n_pairs: image-caption pairs for distillation; n_eval: test scenes (one VQA question and
            one held-out caption each).
        d_model / layers / heads / ffn_dim / vocab_size: the BART built here.
        text_steps / distill_steps / batch_size / lr: optimisation.
        variants: ablations, names from :data:`VARIANTS`.
        seeds: distillation seeds (the text-pretrained PLM is shared).
        num_beams: 1 = greedy decoding.
        prefix_len / mask_ratio / prefix_at: ``VLKDConfig`` settings of the ICTI objective.
            Defaults here (input prefix, 50 % masking) differ from the library's (output
            prefix, BART's 30 %): on a diagnostic run with an information-complete stand-in
            image code they let more of the image reach the answers (see the README part).
        freeze: student parts kept fixed while distilling (``VLKDConfig.freeze``); default the
            decoder, so distilling on captions does not overwrite the PLM's prompt format
            (variant ``full_train_decoder`` trains it, for comparison).
        plm_cache: folder to keep the text-pretrained PLM in and reuse when its settings match
            (None: a temporary folder).
    """

    teacher: Any = "world-clip"
    world_seed: int = 0
    domain: str = "flat"
    image_size: int = 64
    text_corpus: str = "captions+qa+context"
    n_text: int = 3000
    n_pairs: int = 2000
    n_eval: int = 300
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    ffn_dim: int = 128
    vocab_size: int = 600
    text_steps: int = 1000
    distill_steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] = (0,)
    num_beams: int = 1
    prefix_len: int = 4
    mask_ratio: float = 0.5
    prefix_at: str = "encoder_input"
    freeze: tuple[str, ...] = ("decoder",)
    plm_cache: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"variants: unknown {unknown}; allowed: {list(VARIANTS)}")
        if self.text_corpus not in TEXT_CORPORA:
            raise ValueError(
                f"text_corpus: unknown {self.text_corpus!r}; allowed: {list(TEXT_CORPORA)}"
            )
        for name in ("n_text", "n_pairs", "n_eval", "text_steps", "distill_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (contrastive negatives)")
        if not self.seeds:
            raise ValueError("seeds must not be empty")

    @classmethod
    def quick(cls, **kw: Any) -> VLKDBenchConfig:
        """A smoke-test size (well under a minute)."""
        base = dict(
            n_text=300,
            n_pairs=200,
            n_eval=48,
            d_model=32,
            layers=1,
            heads=2,
            ffn_dim=64,
            vocab_size=400,
            text_steps=60,
            distill_steps=40,
            batch_size=16,
        )
        base.update(kw)
        return cls(**base)


# ------------------------------------------------------------------------------------ data
def _world() -> Any:
    try:
        from mad_distill.data.world import generator, scene, tasks
    except ImportError as e:  # the world package is another part of the project
        raise RuntimeError(f"the embedded world is not available: {e}") from e
    return generator, scene, tasks


def _captions(split: str, indices: Sequence[int], world_seed: int) -> list[str]:
    generator, scene, _ = _world()
    out = []
    for i in indices:
        rng = np.random.default_rng([_CAPTION_NS, world_seed, generator.SPLITS.index(split), i])
        out.append(scene.random_caption(generator.generate_scene(world_seed, split, i), rng))
    return out


def _vqa(split: str, indices: Sequence[int], world_seed: int) -> list[Any]:
    generator, _, tasks = _world()
    code = tasks.TASKS.index("vqa")
    return [
        tasks.make_instance(
            "vqa",
            generator.generate_scene(world_seed, split, i),
            generator.task_rng(world_seed, split, code, i),
        )
        for i in indices
    ]


def _qa_text(inst: Any, context: str | None = None) -> str:
    text = TEMPLATE.format(question=inst.text, mask=_majority(inst))
    return text if context is None else f"{text} {context}"


def _full_captions(split: str, indices: Sequence[int], world_seed: int) -> list[str]:
    generator, scene, _ = _world()
    return [scene.scene_caption(generator.generate_scene(world_seed, split, i)) for i in indices]


def _majority(inst: Any) -> str:
    _, _, tasks = _world()
    return tasks.VQA_ANSWERS[int(inst.label)]


@torch.no_grad()
def _embed_images(
    teacher: CLIPLikeTeacher, split: str, indices: Sequence[int], cfg: VLKDBenchConfig
) -> Tensor:
    generator, _, _ = _world()
    pre = getattr(teacher, "preprocess", None)
    if pre is None:
        raise ValueError("teacher has no preprocess transform (needed to feed world images)")
    out = []
    for s in range(0, len(indices), 128):
        idx = list(indices[s : s + 128])
        arr = generator.generate_images(cfg.world_seed, split, cfg.domain, idx, cfg.image_size)
        batch = torch.stack([pre(Image.fromarray(a)) for a in arr])
        out.append(teacher.encode_image(batch).pooled.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def _embed_texts(teacher: CLIPLikeTeacher, texts: Sequence[str]) -> Tensor:
    return torch.cat(
        [
            teacher.encode_text(list(texts[s : s + 256])).pooled.float().cpu()
            for s in range(0, len(texts), 256)
        ]
    )


# ----------------------------------------------------------------------------- training
def _pretrain_text(texts: list[str], out_dir: Path, cfg: VLKDBenchConfig) -> Path:
    """Tokenizer + random-init BART + BART text infilling on ``texts``; saved to ``out_dir``."""
    tok = train_bpe_tokenizer(texts, out_dir, vocab_size=cfg.vocab_size)
    build_bart(
        out_dir,
        tok,
        cfg.d_model,
        cfg.layers,
        cfg.heads,
        cfg.ffn_dim,
        max_position_embeddings=128,
        seed=0,
    )
    model = BartForConditionalGeneration.from_pretrained(out_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(texts), generator=gen).tolist()
    pos = 0
    for _ in range(cfg.text_steps):
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(texts), generator=gen).tolist(), 0
        batch = [texts[i] for i in order[pos : pos + cfg.batch_size]]
        pos += cfg.batch_size
        loss = _infill(model, tok, batch, gen, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out_dir)
    return out_dir


_PLM_KEYS = (
    "world_seed",
    "text_corpus",
    "n_text",
    "d_model",
    "layers",
    "heads",
    "ffn_dim",
    "vocab_size",
    "text_steps",
    "batch_size",
    "lr",
)


def _cached_plm(texts: list[str], tmp: Path, cfg: VLKDBenchConfig) -> Path:
    """The text-pretrained PLM: reused from ``cfg.plm_cache`` when its settings match."""
    if cfg.plm_cache is None:
        return _pretrain_text(texts, tmp / "plm", cfg)
    key = {k: getattr(cfg, k) for k in _PLM_KEYS}
    out = Path(cfg.plm_cache)
    marker = out / "vlkd_plm_settings.json"
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return out
    _pretrain_text(texts, out, cfg)
    marker.write_text(json.dumps(key))  # written last: a half-trained folder is never reused
    return out


def _infill(model, tok, texts, gen, prefix, prefix_at="encoder_output") -> Tensor:
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    masked, matt = span_mask(
        enc.input_ids,
        enc.attention_mask,
        tok.mask_token_id,
        tok.pad_token_id,
        tok.all_special_ids,
        generator=gen,
    )
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return image_conditioned_infilling(model, masked, matt, labels, prefix, prefix_at)


def _distill(
    plm_dir: Path,
    teacher: CLIPLikeTeacher,
    pairs: tuple[list[str], Tensor, Tensor],
    objectives: Sequence[str],
    freeze: Sequence[str],
    seed: int,
    cfg: VLKDBenchConfig,
) -> VLKDModule:
    L.seed_everything(seed, workers=False, verbose=False)
    vcfg = VLKDConfig(
        weights={k: 1.0 for k in objectives},
        lr=cfg.lr,
        prefix_len=cfg.prefix_len,
        freeze=tuple(freeze),
        mask_ratio=cfg.mask_ratio,
        prefix_at=cfg.prefix_at,
    )
    module = VLKDModule(plm_dir, teacher, config=vcfg)
    captions, img, txt = pairs
    items = list(range(len(captions)))
    loader = DataLoader(
        items,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda idx: VLKDBatch(
            [captions[i] for i in idx], image_embeds=img[idx], text_embeds=txt[idx]
        ),
    )
    trainer = L.Trainer(
        max_steps=cfg.distill_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(cfg.extra.get("progress", False)),
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, loader)
    module.eval()
    return module


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _evaluate(
    student: BartForConditionalGeneration,
    tok: Any,
    prefix: torch.nn.Module | None,
    ev: dict[str, Any],
    cfg: VLKDBenchConfig,
) -> dict[str, Any]:
    student.eval()
    res: dict[str, Any] = {}
    zs = ZeroShotVQA(
        student, tok, prefix, template=TEMPLATE, num_beams=cfg.num_beams, prefix_at=cfg.prefix_at
    )
    qs = [inst.text for inst in ev["vqa"]]
    gold = [inst.answers for inst in ev["vqa"]]
    variants = {"text_only": None}
    if prefix is not None:
        variants = {"image": ev["img"], "text_only": None}
    for name, emb in variants.items():
        pred = (
            zs.predict(qs, image_embeds=emb)
            if emb is not None
            else ZeroShotVQA(
                student, tok, None, template=TEMPLATE, num_beams=cfg.num_beams
            ).predict(qs)
        )
        res[f"vqa_{name}"] = vqa_accuracy(pred, gold)
        if name == "image" or prefix is None:
            res["vqa_by_type"] = _by_type(pred, ev["vqa"])
            res["examples"] = [
                {"question": q, "prediction": p, "answer": _majority(i)}
                for q, p, i in list(zip(qs, pred, ev["vqa"]))[:8]
            ]
    gen = torch.Generator().manual_seed(1234)
    res["infill_text"] = _chunked_infill(student, tok, ev["captions"], None, gen)
    # text VLKD never trains on (the PLM's QA-format text): retention beyond the captions
    gen = torch.Generator().manual_seed(1234)
    res["infill_qa"] = _chunked_infill(student, tok, ev["qa_texts"], None, gen)
    if prefix is not None:
        gen = torch.Generator().manual_seed(1234)
        res["infill_image"] = _chunked_infill(
            student, tok, ev["captions"], prefix(ev["img"]), gen, cfg.prefix_at
        )
    return res


def _chunked_infill(student, tok, texts, prefix, gen, prefix_at="encoder_output") -> float:
    total, n = 0.0, 0
    for s in range(0, len(texts), 64):
        p = None if prefix is None else prefix[s : s + 64]
        chunk = texts[s : s + 64]
        total += float(_infill(student, tok, chunk, gen, p, prefix_at)) * len(chunk)
        n += len(chunk)
    return total / n


def _by_type(pred: list[str], insts: list[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for qt in sorted({i.qtype for i in insts}):
        idx = [k for k, i in enumerate(insts) if i.qtype == qt]
        out[qt] = vqa_accuracy([pred[k] for k in idx], [insts[k].answers for k in idx])
    return out


@torch.no_grad()
def _teacher_zero_shot(teacher: CLIPLikeTeacher, ev: dict[str, Any]) -> float:
    """CLIP's own zero-shot VQA: candidate prompts scored against the image, reduced to answers
    by the world's verbaliser (log-sum-exp of ``logit_scale · cos`` per answer)."""
    from mad_distill.data.world.zero_shot import group_logits

    _, _, tasks = _world()
    scale = float(getattr(teacher, "logit_scale", torch.tensor(100.0)))
    preds = []
    for inst, img in zip(ev["vqa"], ev["img"]):
        txt = F.normalize(_embed_texts(teacher, inst.candidates), dim=-1)
        logits = scale * (txt @ F.normalize(img, dim=-1))
        groups = torch.tensor(inst.groups)
        cls = group_logits(logits[None], groups[None], len(tasks.VQA_ANSWERS)).argmax(-1)
        preds.append(tasks.VQA_ANSWERS[int(cls)])
    return vqa_accuracy(preds, [i.answers for i in ev["vqa"]])


# ---------------------------------------------------------------------------------- run
def run(cfg: VLKDBenchConfig, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results dict (and writes JSON + Markdown to ``out_dir``)."""
    from mad_distill.teachers import create_teacher

    t0 = time.time()
    torch.manual_seed(0)
    _world()  # importing the world registers the "world-clip" teacher alias
    teacher = create_teacher(cfg.teacher) if isinstance(cfg.teacher, str) else cfg.teacher
    timings: dict[str, float] = {}

    # text-only corpus about pretrain-split scenes
    text_idx = list(range(cfg.n_text))
    texts = _captions("pretrain", text_idx, cfg.world_seed)
    if cfg.text_corpus != "captions":
        insts = _vqa("pretrain", text_idx, cfg.world_seed)
        contexts: list[str | None] = [None] * len(insts)
        if cfg.text_corpus == "captions+qa+context":  # reading comprehension, text only
            contexts = _full_captions("pretrain", text_idx, cfg.world_seed)
        texts += [_qa_text(i, c) for i, c in zip(insts, contexts)]
    # distillation pairs (train split) and evaluation (test split), teacher features once
    pair_idx = list(range(cfg.n_pairs))
    captions = _captions("train", pair_idx, cfg.world_seed)
    pairs = (
        captions,
        _embed_images(teacher, "train", pair_idx, cfg),
        _embed_texts(teacher, captions),
    )
    ev_idx = list(range(cfg.n_eval))
    ev = {
        "vqa": _vqa("test", ev_idx, cfg.world_seed),
        "captions": _captions("test", ev_idx, cfg.world_seed),
        "img": _embed_images(teacher, "test", ev_idx, cfg),
    }
    # held-out QA texts in the text corpus' format (with the description when it has one)
    ev_ctx = (
        _full_captions("test", ev_idx, cfg.world_seed)
        if cfg.text_corpus == "captions+qa+context"
        else [None] * len(ev_idx)
    )
    ev["qa_texts"] = [_qa_text(i, c) for i, c in zip(ev["vqa"], ev_ctx)]
    timings["data_and_teacher_features_s"] = time.time() - t0

    rows: dict[str, Any] = {"teacher_zero_shot": {"vqa_image": _teacher_zero_shot(teacher, ev)}}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        plm_dir = _cached_plm(texts, Path(tmp), cfg)
        timings["text_pretraining_s"] = time.time() - t
        tok = AutoTokenizer.from_pretrained(plm_dir)
        plm = BartForConditionalGeneration.from_pretrained(plm_dir)
        rows["plm_undistilled"] = _evaluate(plm, tok, None, ev, cfg)
        for variant in cfg.variants:
            per_seed = []
            t = time.time()
            for seed in cfg.seeds:
                objectives, freeze = VARIANTS[variant]
                freeze = cfg.freeze if freeze is None else freeze
                module = _distill(plm_dir, teacher, pairs, objectives, freeze, seed, cfg)
                per_seed.append(_evaluate(module.student, module.tokenizer, module.prefix, ev, cfg))
            timings[f"distill_{variant}_s"] = time.time() - t
            rows[variant] = _aggregate(per_seed)
    result = {
        "config": {
            k: (v if not callable(getattr(v, "encode_image", None)) else repr(v))
            for k, v in asdict(cfg).items()
        },
        "plm": "random-init BART, text-pretrained here by BART text infilling on world text "
        f"({cfg.text_corpus}); no pretrained BART is available offline",
        "rows": rows,
        "timings": {**timings, "total_s": time.time() - t0},
        "torch_threads": torch.get_num_threads(),
    }
    if out_dir is not None:
        _write(result, Path(out_dir))
    return result


def _aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for key in ("vqa_image", "vqa_text_only", "infill_text", "infill_qa", "infill_image"):
        vals = [r[key] for r in per_seed if key in r]
        if vals:
            out[key] = float(np.mean(vals))
            out[f"{key}_std"] = float(np.std(vals))
    types = per_seed[0].get("vqa_by_type", {})
    out["vqa_by_type"] = {t: float(np.mean([r["vqa_by_type"][t] for r in per_seed])) for t in types}
    out["examples"] = per_seed[0].get("examples", [])
    return out


def markdown(result: dict[str, Any]) -> str:
    """The results table."""
    rows = result["rows"]
    types = sorted(next((r["vqa_by_type"] for r in rows.values() if "vqa_by_type" in r), {}))
    head = [
        "model",
        "VQA acc (image)",
        "VQA acc (no image)",
        *types,
        "infill loss, captions ↓",
        "infill loss, QA text ↓",
        "infill loss, captions + image ↓",
    ]
    names = {
        "teacher_zero_shot": "CLIP teacher (ranks candidate prompts)",
        "plm_undistilled": "PLM, undistilled",
        "full": "VLKD (TTDM+ITC+ICTI)",
        "no_ttdm": "VLKD − TTDM",
        "no_itc": "VLKD − ITC",
        "no_icti": "VLKD − ICTI",
        "icti_only": "VLKD, ICTI only",
        "full_train_decoder": "VLKD, decoder trained too",
    }
    fmt = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    los = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in rows.items():
        by = r.get("vqa_by_type", {})
        cells = [
            names.get(key, key),
            fmt(r.get("vqa_image")),
            fmt(r.get("vqa_text_only")),
            *[fmt(by.get(t)) for t in types],
            los(r.get("infill_text")),
            los(r.get("infill_qa")),
            los(r.get("infill_image")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("vlkd.json", json.dumps(result, indent=2, default=str)),
        ("vlkd.md", markdown(result)),
    ):
        atomic_write_text(out / name, text)  # never a half-written table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="mad-distill vlkd",
        description="VLKD on the embedded world: distil the world CLIP into a small BART, then "
        "zero-shot VQA and text infilling before/after, with ablations of each objective.",
    )
    p.add_argument("--out", default="benchmarks/results/vlkd", help="output folder")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (< 1 minute)")
    p.add_argument("--teacher", default="world-clip", help="teacher spec (create_teacher)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    p.add_argument("--text-corpus", default=None, choices=list(TEXT_CORPORA))
    p.add_argument("--domain", default=None)
    p.add_argument("--distill-steps", type=int, default=None)
    p.add_argument("--text-steps", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=None)
    p.add_argument("--prefix-at", default=None, choices=["encoder_output", "encoder_input"])
    p.add_argument("--mask-ratio", type=float, default=None)
    p.add_argument("--freeze", nargs="*", default=None, help="student parts kept fixed")
    p.add_argument("--plm-cache", default=None, help="folder to keep / reuse the text PLM in")
    p.add_argument("--progress", action="store_true", help="Lightning progress bars")
    a = p.parse_args(argv)
    kw: dict[str, Any] = {"teacher": a.teacher, "extra": {"progress": a.progress}}
    for arg, key in (
        ("seeds", "seeds"),
        ("variants", "variants"),
        ("text_corpus", "text_corpus"),
        ("domain", "domain"),
        ("distill_steps", "distill_steps"),
        ("text_steps", "text_steps"),
        ("num_beams", "num_beams"),
        ("freeze", "freeze"),
        ("plm_cache", "plm_cache"),
        ("prefix_at", "prefix_at"),
        ("mask_ratio", "mask_ratio"),
    ):
        v = getattr(a, arg)
        if v is not None:
            kw[key] = tuple(v) if isinstance(v, list) else v
    cfg = VLKDBenchConfig.quick(**kw) if a.quick else VLKDBenchConfig(**kw)
    # one Trainer per ablation: keep Lightning's per-fit banner lines out of the table's way
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    result = run(cfg, a.out)
    print(markdown(result))
    print(
        f"wrote {Path(a.out) / 'vlkd.json'} and {Path(a.out) / 'vlkd.md'} "
        f"in {result['timings']['total_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
