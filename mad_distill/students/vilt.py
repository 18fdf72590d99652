"""Hugging Face ViLT (arXiv 2102.03334) as a MAD student, without editing its ``forward``.

:class:`ViltStudent` loads ``transformers.ViltModel.from_pretrained(<local dir>)`` (e.g. a
download of ``dandelin/vilt-b32-mlm``; the ``vilt.`` prefix of a task checkpoint is handled by
``from_pretrained``), adds a task head, and takes the distilled token features from the module
named by ``tap`` through a forward hook (:class:`~mad_distill.hooks.FeatureTap`).

ViLT's sequence is ``[text tokens (L)] [image CLS] [patches (P)]``. Its ``visual_embed`` draws
the patches in a random order (``torch.multinomial``; ViLT is permutation-equivariant, so it does
not care), but MAD aligns image tokens to the teacher's patch grid by position. The adapter
therefore calls ``embeddings.visual_embed`` itself with ``max_image_length=-1`` (keep every
patch), puts the patches back in row-major grid order with the ``patch_index`` it returns, and
passes them to ``ViltModel.forward`` as ``image_embeds`` (its documented hook for custom patch
embedding). Token kinds: text tokens inside a word are ``TEXT`` (word ids from the fast
tokenizer's offsets), ``[CLS]``/``[SEP]``/padding and the image CLS are ``OTHER``, patches are
``IMAGE`` on grid ``(H / patch, W / patch)``.

Images are resized to a fixed ``image_size`` square before ``ViltImageProcessor`` (ViLT itself
keeps the aspect ratio, shorter side 384): MAD needs one patch grid per batch. Our choice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from mad_distill.hooks import FeatureTap, get_submodule
from mad_distill.tasks.students import HFTextProcessor, TaskStudent, _require
from mad_distill.types import IMAGE, OTHER, TEXT, StudentTokens

__all__ = ["ViltImageTransform", "ViltStudent"]


class ViltImageTransform:
    """PIL image -> ``[3, S, S]`` with ViLT's own ``ViltImageProcessor`` (normalisation), after a
    resize to a fixed ``S x S`` square. Picklable (DataLoader workers).

    Args:
        processor: a ``ViltImageProcessor``.
        image_size: side ``S``; a multiple of the processor's ``size_divisor``.
    """

    def __init__(self, processor: Any, image_size: int) -> None:
        divisor = int(getattr(processor, "size_divisor", 1) or 1)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
        if image_size % divisor:
            raise ValueError(
                f"image_size ({image_size}) must be a multiple of the ViLT image processor's "
                f"size_divisor ({divisor})"
            )
        self.processor = processor
        self.image_size = image_size

    def __call__(self, image: Image.Image) -> Tensor:
        s = self.image_size
        im = image.convert("RGB").resize((s, s), Image.BICUBIC)
        out = self.processor(
            images=im, size={"shortest_edge": s}, do_pad=False, return_tensors="pt"
        )
        x = out["pixel_values"][0]
        if tuple(x.shape[-2:]) != (s, s):
            raise ValueError(
                f"ViltImageProcessor returned {tuple(x.shape[-2:])} images for image_size {s}"
            )
        return x


class ViltStudent(TaskStudent):
    """A pretrained ViLT with a task head; distilled tokens come from a hooked layer.

    Args:
        task / num_classes: given by the task module (``classify``: an MLP head over the pooled
            output, as ``ViltForQuestionAnswering``; ``multiple_choice``: the same MLP with one
            output, run once per (text, choice) pair).
        model_path: local directory of a ViLT checkpoint with its tokenizer and
            ``preprocessor_config.json`` (``save_pretrained`` of model, tokenizer and processor).
        tap: module path inside the ``ViltModel`` whose output MAD distils, e.g.
            ``"encoder.layer.11"`` (the last layer of ViLT-B/32, before the final LayerNorm).
            ``None``: the last encoder layer. A wrong path lists the nearest module names.
        image_size: side of the square student images (multiple of 32 for ViLT-B/32).
        max_text_len: longest token sequence; default the model's ``max_position_embeddings``
            (40 for ViLT).
        head_dropout: dropout before the head.
    """

    def __init__(
        self,
        task: str,
        num_classes: int,
        *,
        model_path: str,
        tap: str | None = None,
        image_size: int = 384,
        max_text_len: int | None = None,
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__(task, num_classes)
        from transformers import AutoTokenizer, ViltImageProcessor, ViltModel

        path = Path(os.path.expanduser(model_path))
        if not path.is_dir():
            raise FileNotFoundError(f"ViLT model_path is not a directory: {path}")
        if not (path / "preprocessor_config.json").is_file():
            raise FileNotFoundError(
                f"{path / 'preprocessor_config.json'} not found: save the ViltImageProcessor "
                "with the model (ViltProcessor.from_pretrained(...).save_pretrained(dir))"
            )
        self.model_path = str(path)
        self.vilt = ViltModel.from_pretrained(str(path))
        cfg = self.vilt.config
        n_layers = int(cfg.num_hidden_layers)
        self.tap = f"encoder.layer.{n_layers - 1}" if tap is None else tap
        get_submodule(self.vilt, self.tap)  # fail now, listing nearby names, not at first step
        max_pos = int(cfg.max_position_embeddings)
        max_text_len = max_pos if max_text_len is None else int(max_text_len)
        if not 3 <= max_text_len <= max_pos:
            raise ValueError(
                f"max_text_len must be in [3, {max_pos}] (the model's max_position_embeddings), "
                f"got {max_text_len}"
            )
        if image_size % int(cfg.patch_size):
            raise ValueError(
                f"image_size ({image_size}) must be a multiple of the patch size ({cfg.patch_size})"
            )
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
        self.text_processor = HFTextProcessor(tok, max_text_len)
        self.image_transform = ViltImageTransform(
            ViltImageProcessor.from_pretrained(str(path)), image_size
        )
        d = int(cfg.hidden_size)
        out = num_classes if task == "classify" else 1
        self.head = nn.Sequential(
            nn.Dropout(head_dropout),
            nn.Linear(d, 2 * d),
            nn.LayerNorm(2 * d),
            nn.GELU(),
            nn.Linear(2 * d, out),
        )

    @property
    def hidden_dim(self) -> int:
        return int(self.vilt.config.hidden_size)

    def _image_embeds(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``[B, 1 + P, d]`` image CLS + patches in row-major order, and the grid ``(h, w)``."""
        b, _, height, width = pixel_values.shape
        mask = torch.ones(b, height, width, dtype=torch.long, device=pixel_values.device)
        x, _, (patch_index, (gh, gw)) = self.vilt.embeddings.visual_embed(
            pixel_values, mask, max_image_length=-1
        )
        if x.shape[1] != 1 + gh * gw:
            raise RuntimeError(
                f"ViLT visual_embed kept {x.shape[1] - 1} of {gh * gw} patches; expected all"
            )
        pos = patch_index[..., 0] * gw + patch_index[..., 1]  # [B, P]
        order = pos.argsort(dim=1)
        patches = x[:, 1:].gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return torch.cat([x[:, :1], patches], dim=1), (int(gh), int(gw))

    def forward(self, inputs: dict[str, Any], token_choice: Tensor | None = None) -> StudentTokens:
        _require(inputs, ("pixel_values", "input_ids", "attention_mask", "word_ids"))
        pixel_values = inputs["pixel_values"]
        ids, am, wids = inputs["input_ids"], inputs["attention_mask"], inputs["word_ids"]
        tt = inputs.get("token_type_ids")
        mc = self.task == "multiple_choice"
        if ids.dim() != (3 if mc else 2):
            raise ValueError(
                f"input_ids must be {'[B, K, L]' if mc else '[B, L]'} for task={self.task!r}, "
                f"got {tuple(ids.shape)}"
            )
        b = ids.shape[0]
        k = ids.shape[1] if mc else 1
        if mc:
            flat = lambda t: None if t is None else t.reshape(b * k, *t.shape[2:])  # noqa: E731
            ids, am, wids, tt = flat(ids), flat(am), flat(wids), flat(tt)
            pixel_values = pixel_values.repeat_interleave(k, dim=0)
        image_embeds, grid = self._image_embeds(pixel_values)
        n_img = image_embeds.shape[1]
        image_mask = torch.ones(ids.shape[0], n_img, dtype=torch.long, device=ids.device)
        with FeatureTap(self.vilt, {"hidden": self.tap}) as tap:
            out = self.vilt(
                input_ids=ids,
                attention_mask=am,
                token_type_ids=tt,
                image_embeds=image_embeds,
                pixel_mask=image_mask,
            )
        hidden = tap["hidden"]
        logits = self.head(out.pooler_output)
        if mc:
            logits = logits.view(b, k)
            choice = (
                torch.zeros(b, dtype=torch.long, device=ids.device)
                if token_choice is None
                else token_choice.long()
            )
            if tuple(choice.shape) != (b,) or bool((choice < 0).any() | (choice >= k).any()):
                raise ValueError(f"token_choice must be [B] = ({b},) in [0, {k}), got {choice}")
            rows = torch.arange(b, device=ids.device) * k + choice
            hidden, am, wids = hidden[rows], am[rows], wids[rows]
        text_valid = am.bool()
        text_kinds = torch.where(
            (wids >= 0) & text_valid, torch.full_like(wids, TEXT), torch.full_like(wids, OTHER)
        )
        img_kinds = text_kinds.new_full((b, n_img), IMAGE)
        img_kinds[:, 0] = OTHER  # ViLT's image CLS token has no teacher patch
        return StudentTokens(
            hidden=hidden,
            mask=torch.cat([text_valid, text_valid.new_ones(b, n_img)], dim=1),
            kinds=torch.cat([text_kinds, img_kinds], dim=1),
            word_ids=torch.cat([wids.long(), wids.new_full((b, n_img), -1).long()], dim=1),
            image_grid=grid,
            logits=logits,
        )
