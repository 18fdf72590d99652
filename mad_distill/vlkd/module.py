"""``VLKDModule``: distil a frozen CLIP into a BART student on image-caption pairs (VLKD,
arXiv 2203.06386, §3) with the objectives of :mod:`mad_distill.vlkd.objectives`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from open_clip.loss import ClipLoss
from torch import Tensor, nn
from transformers import AutoTokenizer, BartForConditionalGeneration, PreTrainedTokenizerBase

from mad_distill.types import TeacherImageOutput, TeacherTextOutput
from mad_distill.vlkd.objectives import (
    DISTANCES,
    OBJECTIVES,
    POOLINGS,
    PREFIX_PLACES,
    ImagePrefix,
    check_objective_names,
    image_conditioned_infilling,
    image_text_contrastive,
    logit_scale_init,
    pool_text,
    span_mask,
    text_text_distance,
)

PROJECTIONS: tuple[str, ...] = ("linear", "mlp", "none")
#: student parts that ``VLKDConfig.freeze`` can keep fixed during distillation
FREEZABLE: tuple[str, ...] = ("embeddings", "encoder", "decoder")


@runtime_checkable
class CLIPLikeTeacher(Protocol):
    """What VLKD needs of a teacher: CLIP's two towers, pooled into the joint space."""

    def encode_image(self, images: Tensor) -> TeacherImageOutput: ...

    def encode_text(self, texts: list[str]) -> TeacherTextOutput: ...


@dataclass
class VLKDConfig:
    """VLKD hyper-parameters. Defaults are ours (the paper's are not available here).

    Args:
        weights: weight per objective, keys from ``("ttdm", "itc", "icti")``; a missing key or
            weight 0 switches the objective off. Default all 1.
        distance: TTDM distance, ``"l2"`` (default), ``"l1"`` or ``"cosine"``.
        normalize: L2-normalise embeddings before the TTDM distance (default True).
        pool: PLM text embedding pooling, ``"mean"`` (default) or ``"eos"``.
        projection: student-to-CLIP projection, ``"linear"`` (default), ``"mlp"`` or ``"none"``
            (only when the PLM's ``d_model`` equals CLIP's embedding width).
        prefix_len: number of image-prefix encoder states ``P`` (default 4).
        prefix_hidden: hidden width of the prefix MLP (default ``d_model``; 0 = linear).
        prefix_at: ``"encoder_output"`` (default: prefix states before the encoder's output
            states) or ``"encoder_input"`` (before the token embeddings, read by the encoder).
        mask_ratio: fraction of caption tokens masked for ICTI (default 0.3, BART's).
        poisson_lambda: mean masked span length (default 3, BART's).
        init_temperature: initial InfoNCE temperature (default 0.07, CLIP's).
        learnable_temperature: learn the temperature (default True).
        max_logit_scale: clamp of the inverse temperature (default 100, CLIP's).
        max_length: truncate captions to this many student tokens (default 64).
        lr: AdamW learning rate (default 1e-4).
        weight_decay: AdamW weight decay (default 0.01).
        freeze: student parts kept fixed, from ``("embeddings", "encoder", "decoder")``
            (``"encoder"`` / ``"decoder"``: their layers, positions and norms; ``"embeddings"``:
            the token embeddings BART shares between encoder, decoder and LM head). Default
            none. Freezing the decoder keeps the PLM's generation (and its prompt format)
            intact, so that the encoder and the prefix learn to speak to it.
    """

    weights: dict[str, float] = field(
        default_factory=lambda: {"ttdm": 1.0, "itc": 1.0, "icti": 1.0}
    )
    distance: str = "l2"
    normalize: bool = True
    pool: str = "mean"
    projection: str = "linear"
    prefix_len: int = 4
    prefix_hidden: int | None = None
    prefix_at: str = "encoder_output"
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    init_temperature: float = 0.07
    learnable_temperature: bool = True
    max_logit_scale: float = 100.0
    max_length: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    freeze: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.weights, Mapping):
            raise TypeError(f"VLKDConfig.weights must be a dict, got {type(self.weights)}")
        check_objective_names(list(self.weights), arg="VLKDConfig.weights")
        for k, v in self.weights.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"VLKDConfig.weights[{k!r}] must be a finite float >= 0, got {v}")
        self.weights = {k: float(v) for k, v in self.weights.items()}
        if not any(v > 0 for v in self.weights.values()):
            raise ValueError(
                f"VLKDConfig.weights: at least one objective of {list(OBJECTIVES)} needs weight > 0"
            )
        choices = (
            ("distance", DISTANCES),
            ("pool", POOLINGS),
            ("projection", PROJECTIONS),
            ("prefix_at", PREFIX_PLACES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"VLKDConfig.{name}: unknown value {getattr(self, name)!r}; "
                    f"allowed: {list(allowed)}"
                )
        if not isinstance(self.prefix_len, int) or self.prefix_len < 1:
            raise ValueError(f"VLKDConfig.prefix_len must be an int >= 1, got {self.prefix_len}")
        if self.prefix_hidden is not None and (
            not isinstance(self.prefix_hidden, int) or self.prefix_hidden < 0
        ):
            raise ValueError(
                f"VLKDConfig.prefix_hidden must be None or an int >= 0, got {self.prefix_hidden}"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"VLKDConfig.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        positive = ("poisson_lambda", "init_temperature", "max_logit_scale", "lr")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"VLKDConfig.{name} must be > 0, got {getattr(self, name)}")
        if isinstance(self.freeze, str):
            raise TypeError("VLKDConfig.freeze must be a list of part names, not a string")
        self.freeze = tuple(self.freeze)
        bad = [f for f in self.freeze if f not in FREEZABLE]
        if bad:
            raise ValueError(
                f"VLKDConfig.freeze: unknown part(s) {bad}; allowed: {list(FREEZABLE)}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"VLKDConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not isinstance(self.max_length, int) or self.max_length < 4:
            raise ValueError(f"VLKDConfig.max_length must be an int >= 4, got {self.max_length}")

    def active(self) -> list[str]:
        """The objectives with weight > 0, in :data:`OBJECTIVES` order."""
        return [k for k in OBJECTIVES if self.weights.get(k, 0.0) > 0]


@dataclass
class VLKDBatch:
    """Image-caption pairs.

    Args:
        captions: ``B`` non-empty captions.
        images: ``[B, 3, H, W]`` images preprocessed for the CLIP teacher; or None when
            ``image_embeds`` is given.
        image_embeds: ``[B, e]`` precomputed CLIP image embeddings (e.g. from a cache), optional.
        text_embeds: ``[B, e]`` precomputed CLIP text embeddings of ``captions``, optional.
    """

    captions: list[str]
    images: Tensor | None = None
    image_embeds: Tensor | None = None
    text_embeds: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.captions, (list, tuple)) or not all(
            isinstance(c, str) for c in self.captions
        ):
            raise TypeError("VLKDBatch.captions must be a list of strings")
        self.captions = list(self.captions)
        if not self.captions:
            raise ValueError("VLKDBatch.captions is empty")
        for i, c in enumerate(self.captions):
            if not c.strip():
                raise ValueError(f"VLKDBatch.captions[{i}] is an empty caption")
        b = len(self.captions)
        if self.images is None and self.image_embeds is None:
            raise ValueError("VLKDBatch needs images or image_embeds")
        for name in ("images", "image_embeds", "text_embeds"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != b:
                raise ValueError(f"VLKDBatch.{name} has batch {t.shape[0]}, captions have {b}")

    def to(self, device: torch.device | str) -> VLKDBatch:
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return VLKDBatch(
            self.captions, mv(self.images), mv(self.image_embeds), mv(self.text_embeds)
        )


def collate_pairs(items: Sequence[Mapping[str, Any]]) -> VLKDBatch:
    """``DataLoader`` collate: dicts with ``"caption"`` and ``"image"`` (``[3, H, W]``) and/or
    ``"image_embed"`` / ``"text_embed"`` (``[e]``) → :class:`VLKDBatch`."""
    if not items:
        raise ValueError("collate_pairs: empty list of items")

    def stack(key: str) -> Tensor | None:
        if key not in items[0]:
            return None
        return torch.stack([it[key] for it in items])

    return VLKDBatch(
        captions=[it["caption"] for it in items],
        images=stack("image"),
        image_embeds=stack("image_embed"),
        text_embeds=stack("text_embed"),
    )


class VLKDModule(L.LightningModule):
    """Distil a frozen CLIP teacher into a BART student (VLKD §3).

    Args:
        student: a local folder with a ``BartForConditionalGeneration`` checkpoint (loaded with
            ``from_pretrained``), or the model itself.
        teacher: a frozen CLIP-like teacher (:class:`CLIPLikeTeacher`, e.g. the project's
            ``OpenCLIPTeacher``); kept out of ``state_dict``, checkpoints and the optimizer, in
            eval mode, moved with the module.
        tokenizer: the student's tokenizer, or a folder; default: the student folder.
        config: :class:`VLKDConfig` (or its fields as a dict).
        embed_dim: CLIP's joint width; default ``teacher.embed_dim`` if present, else probed by
            encoding one caption.

    ``VLKDModule.load_from_checkpoint(path, teacher=teacher)`` rebuilds the module (the student
    folder recorded at construction must still exist; pass ``student=`` otherwise).

    Logs ``vlkd/<objective>`` per active objective, ``vlkd/loss`` and ``vlkd/logit_scale``
    (``val/...`` in validation, plus ``val/infill_text``, the text-only infilling loss).
    """

    def __init__(
        self,
        student: str | os.PathLike | BartForConditionalGeneration,
        teacher: CLIPLikeTeacher,
        tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
        config: VLKDConfig | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(config, Mapping):  # from save_hyperparameters / load_from_checkpoint
            config = VLKDConfig(**config)
        self.config = config if config is not None else VLKDConfig()
        if not isinstance(self.config, VLKDConfig):
            raise TypeError(f"config must be a VLKDConfig, got {type(self.config)}")
        if not (
            callable(getattr(teacher, "encode_image", None))
            and callable(getattr(teacher, "encode_text", None))
        ):
            raise TypeError(
                "teacher must have encode_image(images) and encode_text(texts) "
                f"(a CLIP-like teacher), got {type(teacher)}"
            )
        self.student = _load_student(student)
        self.student.train()  # from_pretrained returns eval mode; Lightning keeps modes as found
        _freeze_parts(self.student, self.config.freeze)
        self.tokenizer = _load_tokenizer(tokenizer, student)
        if self.tokenizer.mask_token_id is None:
            raise ValueError("tokenizer has no mask token (needed for text infilling)")
        # not an nn.Module attribute: frozen, never in state_dict / parameters() / checkpoints
        object.__setattr__(self, "_teacher", _freeze(teacher))
        self.save_hyperparameters(
            {
                "config": asdict(self.config),
                "student": str(student) if isinstance(student, (str, os.PathLike)) else None,
            }
        )
        d_model = int(self.student.config.d_model)
        e = int(embed_dim) if embed_dim is not None else self._probe_embed_dim()
        self.embed_dim = e
        self.text_proj = _projection(self.config.projection, d_model, e)
        self.prefix = ImagePrefix(e, d_model, self.config.prefix_len, self.config.prefix_hidden)
        self.logit_scale = nn.Parameter(
            torch.tensor(logit_scale_init(self.config.init_temperature)),
            requires_grad=self.config.learnable_temperature,
        )
        self.clip_loss = ClipLoss()

    # --- teacher -------------------------------------------------------------------------------
    @property
    def teacher(self) -> CLIPLikeTeacher:
        return self._teacher

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> VLKDModule:
        # move / cast the teacher with the module, although it is not a submodule
        super()._apply(fn, *args, **kwargs)
        if isinstance(self._teacher, nn.Module):
            self._teacher._apply(fn, *args, **kwargs)
        return self

    def _probe_embed_dim(self) -> int:
        e = getattr(self._teacher, "embed_dim", None)
        if isinstance(e, int):
            return e
        with torch.no_grad():
            return int(self._teacher.encode_text(["a"]).pooled.shape[-1])

    @torch.no_grad()
    def teacher_embeddings(self, batch: VLKDBatch) -> tuple[Tensor, Tensor]:
        """CLIP's ``([B, e] image, [B, e] text)`` embeddings, precomputed ones where given."""
        img = batch.image_embeds
        if img is None:
            img = self._teacher.encode_image(batch.images).pooled
        txt = batch.text_embeds
        if txt is None:
            txt = self._teacher.encode_text(batch.captions).pooled
        for name, t in (("image", img), ("text", txt)):
            if t.dim() != 2 or t.shape[1] != self.embed_dim:
                raise ValueError(
                    f"teacher {name} embeddings must be [B, {self.embed_dim}], got {tuple(t.shape)}"
                )
        return img.float(), txt.float()

    # --- student -------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Student ids for ``texts``: ``{"input_ids": [B, L], "attention_mask": [B, L]}``."""
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"texts[{i}] is an empty caption")
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def text_embedding(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """PLM text embedding in CLIP's space: encoder → pool → projection, ``[B, e]``."""
        hidden = self.student.get_encoder()(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        return self.text_proj(pool_text(hidden, attention_mask, self.config.pool))

    def infilling_inputs(
        self, texts: Sequence[str], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(masked_ids, masked_attention, labels)`` for text infilling of ``texts``."""
        enc = self.tokenize(texts)
        ids, att = enc["input_ids"], enc["attention_mask"]
        tok = self.tokenizer
        masked, m_att = span_mask(
            ids.cpu(),
            att.cpu(),
            tok.mask_token_id,
            tok.pad_token_id,
            tok.all_special_ids,
            ratio=self.config.mask_ratio,
            poisson_lambda=self.config.poisson_lambda,
            generator=generator,
        )
        labels = ids.masked_fill(att == 0, -100)
        return masked.to(self.device), m_att.to(self.device), labels

    def infilling_loss(
        self,
        texts: Sequence[str],
        image_embeds: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Infilling cross-entropy of ``texts``, conditioned on ``image_embeds [B, e]`` through
        the prefix, or text-only when None (the "keeps its text ability" measure)."""
        masked, m_att, labels = self.infilling_inputs(texts, generator)
        prefix = None if image_embeds is None else self.prefix(image_embeds.to(self.device))
        return image_conditioned_infilling(
            self.student, masked, m_att, labels, prefix, self.config.prefix_at
        )

    def compute_losses(
        self, batch: VLKDBatch, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Each active objective (unweighted) and ``"loss"``, their weighted sum."""
        img, txt = self.teacher_embeddings(batch)
        w = self.config.weights
        active = self.config.active()
        out: dict[str, Tensor] = {}
        if "ttdm" in active or "itc" in active:
            enc = self.tokenize(batch.captions)
            student_txt = self.text_embedding(enc["input_ids"], enc["attention_mask"])
            if "ttdm" in active:
                out["ttdm"] = text_text_distance(
                    student_txt, txt, self.config.distance, self.config.normalize
                )
            if "itc" in active:
                out["itc"] = image_text_contrastive(
                    student_txt,
                    img,
                    self.logit_scale,
                    self.config.max_logit_scale,
                    self.clip_loss,
                )
        if "icti" in active:
            out["icti"] = self.infilling_loss(batch.captions, img, generator)
        out["loss"] = sum(w[k] * out[k] for k in active)
        return out

    # --- Lightning -----------------------------------------------------------------------------
    def training_step(self, batch: VLKDBatch, batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch)
        bs = len(batch.captions)
        for k, v in losses.items():
            self.log(f"vlkd/{k}", v, prog_bar=k == "loss", batch_size=bs)
        self.log("vlkd/logit_scale", self.logit_scale.detach().exp(), batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch: VLKDBatch, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(batch_idx)  # same masks every validation
        losses = self.compute_losses(batch, generator=gen)
        bs = len(batch.captions)
        for k, v in losses.items():
            self.log(f"val/{k}", v, batch_size=bs)
        gen = torch.Generator().manual_seed(batch_idx)
        self.log("val/infill_text", self.infilling_loss(batch.captions, None, gen), batch_size=bs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        if isinstance(batch, VLKDBatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def _load_student(
    student: str | os.PathLike | BartForConditionalGeneration,
) -> BartForConditionalGeneration:
    if isinstance(student, BartForConditionalGeneration):
        return student
    if isinstance(student, (str, os.PathLike)):
        path = os.fspath(student)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"student: no BART checkpoint folder at {path!r}")
        return BartForConditionalGeneration.from_pretrained(path)
    raise TypeError(
        f"student must be a folder path or a BartForConditionalGeneration, got {type(student)}"
    )


def _load_tokenizer(
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None,
    student: str | os.PathLike | BartForConditionalGeneration,
) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    src = tokenizer if tokenizer is not None else student
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError("tokenizer: pass a tokenizer or a folder when student is a model object")
    path = os.fspath(src)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer: no tokenizer folder at {path!r}")
    return AutoTokenizer.from_pretrained(path)


def _freeze(teacher: Any) -> Any:
    if isinstance(teacher, nn.Module):
        teacher.eval()
        teacher.requires_grad_(False)
    return teacher


def _freeze_parts(model: BartForConditionalGeneration, parts: Sequence[str]) -> None:
    shared = model.get_input_embeddings()
    for part in parts:
        if part == "embeddings":
            shared.requires_grad_(False)
            continue
        stack = model.get_encoder() if part == "encoder" else model.get_decoder()
        for name, p in stack.named_parameters():
            if not name.startswith("embed_tokens."):  # the shared table: see "embeddings"
                p.requires_grad_(False)


def _projection(kind: str, d_model: int, embed_dim: int) -> nn.Module:
    if kind == "none":
        if d_model != embed_dim:
            raise ValueError(
                f"VLKDConfig.projection='none' needs the student's d_model ({d_model}) to equal "
                f"the teacher's embedding size ({embed_dim}); use projection='linear' or 'mlp'"
            )
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(d_model, embed_dim)
    return nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, embed_dim))
