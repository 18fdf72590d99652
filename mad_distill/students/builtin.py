"""A small single-stream cross-modal student (ViLT-like) for tests, demos and the benchmark world.

Text tokens (word embeddings) and image patches (a strided convolution) are each given position and
modality-type embeddings, concatenated ``[text ; image]`` and run through a few
``nn.TransformerEncoder`` layers; the first text token (``[CLS]``) is pooled for the task heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from mad_distill.types import IMAGE, OTHER, TEXT, StudentTokens

#: task kinds of :class:`BuiltinVLStudent`
TASKS = ("classify", "multiple_choice")


@dataclass
class BuiltinStudentOutput:
    """Output of :class:`BuiltinVLStudent`.

    Args:
        logits: ``[B, C]`` task logits (``classify``: C classes; ``multiple_choice``: one score per
            candidate).
        tokens: what MAD distils: the tapped layer's tokens ``[B, N, d]`` with mask, kinds, word
            ids, image grid, ``logits`` and (with an MLM head) ``mlm_logits``. For
            ``multiple_choice`` they come from the run on candidate ``token_choice``.
        pooled: ``[B, d]`` (``[B, K, d]`` for ``multiple_choice``) pooled ``[CLS]`` features.
    """

    logits: Tensor
    tokens: StudentTokens
    pooled: Tensor


def _check_pos_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class BuiltinVLStudent(nn.Module):
    """Single-stream cross-modal transformer (in the spirit of ViLT, arXiv 2102.03334).

    Args:
        vocab_size: size of the word vocabulary (e.g. ``len(WordTokenizer)``).
        num_classes: ``classify``: number of answers/labels C (VQA answer vocabulary, SNLI-VE 3);
            ignored for ``multiple_choice``.
        task: ``"classify"`` (one linear head over the pooled token) or ``"multiple_choice"``
            (VCR: the model reads ``(image, question + candidate)`` for each of K candidates and
            scores each with a linear head → ``[B, K]``).
        image_size: input image side (square), divisible by ``patch_size``.
        patch_size: patch side; the student's image grid is ``image_size // patch_size`` squared.
        dim: hidden width ``d``.
        depth: number of transformer layers.
        heads: attention heads (``dim`` divisible by it).
        mlp_ratio: feed-forward width / ``dim``.
        max_text_len: longest text sequence (position embeddings).
        dropout: dropout in the transformer layers.
        tap_layer: which layer's output MAD distils (0-based, negative counts from the end; the
            last layer's output is taken after the final norm).
        mlm_vocab_size: if set, an MLM head over the text teacher's vocabulary gives
            ``tokens.mlm_logits [B, N, V]`` for token-level KL.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        task: str = "classify",
        image_size: int = 32,
        patch_size: int = 8,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        max_text_len: int = 64,
        dropout: float = 0.0,
        tap_layer: int = -1,
        mlm_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_pos_int("vocab_size", vocab_size)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task == "classify":
            _check_pos_int("num_classes", num_classes)
        _check_pos_int("image_size", image_size)
        _check_pos_int("patch_size", patch_size)
        if image_size % patch_size:
            raise ValueError(
                f"image_size ({image_size}) must be divisible by patch_size ({patch_size})"
            )
        _check_pos_int("dim", dim)
        _check_pos_int("depth", depth)
        _check_pos_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        _check_pos_int("max_text_len", max_text_len, 2)
        if not -depth <= tap_layer < depth:
            raise ValueError(f"tap_layer must be in [-{depth}, {depth - 1}], got {tap_layer}")
        if mlm_vocab_size is not None:
            _check_pos_int("mlm_vocab_size", mlm_vocab_size)
        self.task = task
        self.num_classes = num_classes
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        self.max_text_len = max_text_len
        self.tap_layer = tap_layer % depth
        g = image_size // patch_size
        self.image_grid = (g, g)

        self.word_embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.text_pos = nn.Parameter(torch.zeros(1, max_text_len, dim))
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.image_pos = nn.Parameter(torch.zeros(1, g * g, dim))
        self.type_embed = nn.Embedding(2, dim)  # 0 text, 1 image
        self.embed_norm = nn.LayerNorm(dim)
        # norm_first: stable for small from-scratch models; the nested-tensor fast path is never
        # taken (training, pre-norm), so train and eval run the same math
        self.layers = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    dim,
                    heads,
                    dim_feedforward=int(dim * mlp_ratio),
                    dropout=dropout,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.head = nn.Linear(dim, num_classes if task == "classify" else 1)
        self.mlm_head = nn.Linear(dim, mlm_vocab_size) if mlm_vocab_size is not None else None
        nn.init.trunc_normal_(self.text_pos, std=0.02)
        nn.init.trunc_normal_(self.image_pos, std=0.02)

    @property
    def hidden_dim(self) -> int:
        """Width of ``tokens.hidden`` (what MAD's projection heads take)."""
        return self.dim

    def _encode(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (tapped hidden ``[B, N, d]``, last hidden ``[B, N, d]``, mask ``[B, N]``)."""
        b, length = input_ids.shape
        if length > self.max_text_len:
            raise ValueError(
                f"input_ids has {length} tokens, more than max_text_len={self.max_text_len}"
            )
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"images must be [B, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(images.shape)}"
            )
        text = self.word_embed(input_ids) + self.text_pos[:, :length] + self.type_embed.weight[0]
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, P, d]
        image = patches + self.image_pos + self.type_embed.weight[1]
        x = self.embed_norm(torch.cat([text, image], dim=1))
        mask = torch.cat(
            [attention_mask.bool(), attention_mask.new_ones(b, patches.shape[1]).bool()], dim=1
        )
        pad = ~mask
        tapped = None
        for i, layer in enumerate(self.layers):
            x = layer(x, src_key_padding_mask=pad)
            if i == self.tap_layer:
                tapped = x
        last = self.norm(x)
        if self.tap_layer == len(self.layers) - 1:
            tapped = last
        return tapped, last, mask

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        word_ids: Tensor | None = None,
        token_choice: Tensor | None = None,
    ) -> BuiltinStudentOutput:
        """Run the student.

        Args:
            images: ``[B, 3, H, W]``.
            input_ids: ``[B, L]`` (``classify``) or ``[B, K, L]`` (``multiple_choice``).
            attention_mask: same shape as ``input_ids``.
            word_ids: same shape as ``input_ids``, word index per token (-1 for specials); text
                tokens with a word id are the ones MAD may distil.
            token_choice: ``multiple_choice`` only: ``[B]`` which candidate's run to expose as
                ``tokens`` (default 0). Its text is what the teachers must read.
        """
        mc = self.task == "multiple_choice"
        expect = 3 if mc else 2
        if input_ids.dim() != expect:
            raise ValueError(
                f"input_ids must be {'[B, K, L]' if mc else '[B, L]'} for task={self.task!r}, "
                f"got {tuple(input_ids.shape)}"
            )
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        if word_ids is None:
            word_ids = torch.full_like(input_ids, -1)
        elif tuple(word_ids.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"word_ids shape {tuple(word_ids.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        b = input_ids.shape[0]
        if images.shape[0] != b:
            raise ValueError(f"images has batch {images.shape[0]} but input_ids has {b}")
        if mc:
            k = input_ids.shape[1]
            flat = lambda t: t.reshape(b * k, *t.shape[2:])  # noqa: E731
            imgs = (
                images.unsqueeze(1)
                .expand(b, k, *images.shape[1:])
                .reshape(b * k, *images.shape[1:])
            )
            tapped, last, mask = self._encode(imgs, flat(input_ids), flat(attention_mask))
            pooled = self.pooler(last[:, 0])
            logits = self.head(pooled).view(b, k)
            if token_choice is None:
                choice = torch.zeros(b, dtype=torch.long, device=input_ids.device)
            else:
                if tuple(token_choice.shape) != (b,):
                    raise ValueError(
                        f"token_choice must be [B] = ({b},), got {tuple(token_choice.shape)}"
                    )
                if token_choice.numel() and (token_choice.min() < 0 or token_choice.max() >= k):
                    raise ValueError(f"token_choice values must be in [0, {k}), got {token_choice}")
                choice = token_choice.long()
            rows = torch.arange(b, device=input_ids.device) * k + choice
            tapped, last, mask = tapped[rows], last[rows], mask[rows]
            text_wids = word_ids[torch.arange(b, device=input_ids.device), choice]
            pooled = pooled.view(b, k, -1)
        else:
            tapped, last, mask = self._encode(images, input_ids, attention_mask)
            pooled = self.pooler(last[:, 0])
            logits = self.head(pooled)
            text_wids = word_ids
        n_img = self.image_grid[0] * self.image_grid[1]
        text_mask = mask[:, : text_wids.shape[1]]
        text_kinds = torch.where(
            (text_wids >= 0) & text_mask,
            torch.full_like(text_wids, TEXT),
            torch.full_like(text_wids, OTHER),
        )
        kinds = torch.cat([text_kinds, text_kinds.new_full((b, n_img), IMAGE)], dim=1)
        wids = torch.cat([text_wids.long(), text_wids.new_full((b, n_img), -1).long()], dim=1)
        tokens = StudentTokens(
            hidden=tapped,
            mask=mask,
            kinds=kinds,
            word_ids=wids,
            image_grid=self.image_grid,
            logits=logits,
            mlm_logits=self.mlm_head(last) if self.mlm_head is not None else None,
        )
        return BuiltinStudentOutput(logits=logits, tokens=tokens, pooled=pooled)
