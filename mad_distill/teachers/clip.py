"""CLIP teacher: open_clip's image and text towers, frozen.

Gives MAD (arXiv 2204.10496, §3; CLIP-TD, arXiv 2201.05729) what it needs from CLIP: patch tokens
and text tokens (feature targets), pooled embeddings in the joint space (relevance scores for token
selection), last-layer attention from the CLS / EOT token (the ``attention`` score source) and
zero-shot scores of candidate texts with CLIP's logit scale (confidence weighting).

The model is built by ``open_clip.create_model_and_transforms(name, pretrained=...)``, so any
checkpoint open_clip loads (a tag, a ``.pt`` / ``.bin`` / ``.safetensors`` file, a
``local-dir:`` / ``hf-hub:`` model) works unchanged; an already-built open_clip model can be wrapped
directly.

What is computed, and why:

* image ``tokens`` are the last block's patch outputs after ``ln_post`` (what open_clip returns as
  tokens with ``output_tokens=True``), ``tokens_joint`` those tokens through ``proj`` (the same map
  the CLS token takes into the joint space), so they can be compared with text embeddings;
* text ``tokens`` are the last block's outputs after ``ln_final``, ``tokens_joint`` those through
  ``text_projection``; ``pooled`` is open_clip's own ``encode_text`` (EOT / argmax pooling);
* open_clip's blocks call ``nn.MultiheadAttention`` with ``need_weights=False``; the attention
  row of the CLS (image) or pooled (text) query is recomputed from the last block's input with the
  block's own ``ln_1`` and ``in_proj`` weights, for that one query only (O(L), not O(L²)).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mad_distill.align import split_words, word_ids_from_offsets
from mad_distill.ops._utils import host_to_device
from mad_distill.teachers.base import Teacher
from mad_distill.types import TeacherImageOutput, TeacherTextOutput

__all__ = ["OpenCLIPTeacher"]

# prompts are encoded in chunks so a VQA answer vocabulary (~3k strings) does not need one batch
_PROMPT_CHUNK = 256


@dataclass
class _TextParts:
    """Where the pieces of an open_clip text tower live (``CLIP`` keeps them on the model,
    ``CustomTextCLIP`` on ``model.text``)."""

    resblocks: nn.ModuleList
    batch_first: bool
    ln_final: nn.Module
    projection: Any  # nn.Parameter [W, e], nn.Linear, or None
    pool_type: str
    eos_id: int | None
    has_cls_emb: bool
    context_length: int
    width: int
    owner: nn.Module  # the module holding token_embedding, positional_embedding, transformer
    # why the tower must run over the full context (None: running on a prefix is exact)
    no_prefix_reason: str | None = None


def _text_parts(model: nn.Module) -> _TextParts:
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        parts = _TextParts(
            resblocks=text.transformer.resblocks,
            batch_first=getattr(text.transformer, "batch_first", True),
            ln_final=text.ln_final,
            projection=text.text_projection,
            pool_type=text.pool_type,
            eos_id=getattr(text, "eos_id", None),
            has_cls_emb=text.cls_emb is not None,
            context_length=text.context_length,
            width=text.width,
            owner=text,
        )
        parts.no_prefix_reason = _no_prefix_reason(model, parts)
        return parts
    if text is None and hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        parts = _TextParts(
            resblocks=model.transformer.resblocks,
            batch_first=getattr(model.transformer, "batch_first", True),
            ln_final=model.ln_final,
            projection=model.text_projection,
            pool_type=getattr(model, "text_pool_type", "argmax"),
            eos_id=getattr(model, "text_eos_id", None),
            has_cls_emb=False,
            context_length=model.context_length,
            width=model.transformer.width,
            owner=model,
        )
        parts.no_prefix_reason = _no_prefix_reason(model, parts)
        return parts
    raise NotImplementedError(
        f"OpenCLIPTeacher supports open_clip's own TextTransformer text towers; this model's text "
        f"tower is {type(text).__name__ if text is not None else type(model).__name__} "
        f"(e.g. an HF text encoder), whose token features are not wired up yet"
    )


def _no_prefix_reason(model: nn.Module, parts: _TextParts) -> str | None:
    """Why the text tower must run over the full context, or ``None`` if a prefix is exact.

    Running open_clip's text tower on ``ids[:, :n]`` instead of all ``context_length`` positions
    gives the same outputs at positions ``< n`` when every step is either per token (embedding,
    absolute positional embedding, LayerNorm, MLP, projection) or attention under a causal mask
    (position ``i`` reads only positions ``<= i``), and the pooled position is ``< n``. This is
    the case for open_clip 3.x's ``CLIP.encode_text`` / ``TextTransformer.forward`` with the
    default causal mask and ``argmax`` / ``eos`` / ``first`` pooling; anything else (checked
    here) runs the full context, as open_clip does. The outputs are equal up to float rounding:
    softmax and matmul sums over fewer (masked, zero-weight) keys are added in another order
    (measured: ~1e-7 relative on the pooled embedding).
    """
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import (
        CustomResidualAttentionBlock,
        ResidualAttentionBlock,
        TextTransformer,
        Transformer,
    )

    owner = parts.owner
    if isinstance(owner, TextTransformer):
        # the forward we re-implement must be open_clip's own (subclasses may change it)
        if type(model).encode_text is not CustomTextCLIP.encode_text:
            return f"{type(model).__name__}.encode_text is not open_clip's"
        if type(owner).forward is not TextTransformer.forward or (
            type(owner)._embeds is not TextTransformer._embeds
        ):
            return f"{type(owner).__name__} overrides TextTransformer's forward"
        if owner.use_pad_mask:  # a padding mask: outputs depend on the padding
            return "the text tower masks padding tokens"
    elif type(model).encode_text is not CLIP.encode_text:
        return f"{type(model).__name__}.encode_text is not open_clip's"
    if parts.has_cls_emb:
        # CoCa appends a class token after the last position: it moves with the length
        return "the text tower appends a class token"
    if parts.pool_type not in ("argmax", "eos", "first"):
        # 'last' pools position context_length - 1, 'none' returns every position
        return f"pool_type {parts.pool_type!r} depends on the context length"
    transformer = getattr(owner, "transformer", None)
    if type(transformer) is not Transformer:
        return f"text transformer is {type(transformer).__name__}, not open_clip's Transformer"
    if not all(
        type(b) in (ResidualAttentionBlock, CustomResidualAttentionBlock)
        for b in transformer.resblocks
    ):
        return "the text tower has custom attention blocks"
    pos = getattr(owner, "positional_embedding", None)
    if not isinstance(pos, Tensor) or pos.dim() != 2:
        return "the text tower has no absolute positional embedding table"
    mask = getattr(owner, "attn_mask", None)
    if mask is None:  # bidirectional: every position reads the padding
        return "the text tower has no causal mask (bidirectional attention)"
    n = parts.context_length
    if (
        not isinstance(mask, Tensor)
        or mask.dim() != 2
        or mask.shape[0] < n
        or mask.shape[1] < n
        or mask.dtype == torch.bool
    ):
        return "the text tower's attn_mask is not an additive [L, L] mask"
    mask = mask[:n, :n].float()
    upper = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
    if not (bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())):
        return "the text tower's attn_mask is not causal"
    return None


def _project(x: Tensor, projection: Any) -> Tensor:
    if projection is None:
        return x
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x @ projection


@contextmanager
def _capture(block: nn.Module) -> Iterator[dict[str, Any]]:
    """Record the input, ``attn_mask`` and output of ``block`` during one forward."""
    seen: dict[str, Any] = {}

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["input"] = args[0] if args else kwargs["q_x"]
        # Transformer.forward passes attn_mask by keyword; grad checkpointing passes it 4th
        seen["attn_mask"] = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)

    def post(_m: nn.Module, _args: tuple, output: Tensor) -> None:
        seen["output"] = output

    handles = [
        block.register_forward_pre_hook(pre, with_kwargs=True),
        block.register_forward_hook(post),
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def query_attention(
    block: nn.Module, x: Tensor, query: Tensor, attn_mask: Tensor | None = None
) -> Tensor:
    """Attention probabilities of one query token per row in an open_clip block, mean over heads.

    Args:
        block: an open_clip ``ResidualAttentionBlock`` (``ln_1`` + ``nn.MultiheadAttention``).
        x: ``[B, L, D]`` the block's input (batch first).
        query: ``[B]`` long, position of the query token in each row.
        attn_mask: the additive / bool mask the block received: ``[L, L]`` or ``[B*heads, L, L]``.

    Returns:
        ``[B, L]`` float32, each row sums to 1 over the ``L`` keys.
    """
    mha = block.attn
    if not isinstance(mha, nn.MultiheadAttention):
        raise NotImplementedError(
            f"attention recompute needs nn.MultiheadAttention, got {type(mha)}"
        )
    h = block.ln_1(x)
    b, length, d = h.shape
    heads = mha.num_heads
    hd = d // heads
    if mha.in_proj_weight is not None:
        w_q, w_k = mha.in_proj_weight[:d], mha.in_proj_weight[d : 2 * d]
    else:
        w_q, w_k = mha.q_proj_weight, mha.k_proj_weight
    bias = mha.in_proj_bias
    b_q, b_k = (None, None) if bias is None else (bias[:d], bias[d : 2 * d])
    rows = torch.arange(b, device=h.device)
    q = F.linear(h[rows, query], w_q, b_q).view(b, heads, hd).float()
    k = F.linear(h, w_k, b_k).view(b, length, heads, hd).float()
    scores = torch.einsum("bhd,blhd->bhl", q, k) / math.sqrt(hd)
    if attn_mask is not None:
        mask = attn_mask
        if mask.dtype == torch.bool:  # nn.MultiheadAttention: True = not allowed
            mask = torch.zeros_like(mask, dtype=torch.float32).masked_fill(mask, float("-inf"))
        mask = mask.float()
        if mask.dim() == 2:
            scores = scores + mask[:length, :length][query].unsqueeze(1)
        else:
            mask = mask.view(b, heads, mask.shape[-2], mask.shape[-1])[..., :length, :length]
            scores = scores + mask[rows, :, query]
    return scores.softmax(dim=-1).mean(dim=1)


def _pool_positions(ids: Tensor, pool_type: str, eos_id: int | None, has_cls: bool) -> Tensor:
    """Position of the token open_clip pools for each row (``text_global_pool``'s rules)."""
    b, length = ids.shape
    if has_cls:  # CoCa-style appended class token, always last
        return torch.full((b,), length, dtype=torch.long, device=ids.device)
    if pool_type == "argmax":
        return ids.argmax(dim=-1)
    if pool_type == "eos":
        return (ids == eos_id).int().argmax(dim=-1)
    if pool_type == "first":
        return torch.zeros(b, dtype=torch.long, device=ids.device)
    if pool_type == "last":
        return torch.full((b,), length - 1, dtype=torch.long, device=ids.device)
    raise NotImplementedError(f"text pool_type {pool_type!r} has no pooled token")


# ---- word ids for open_clip tokenizers ------------------------------------------------------


def _simple_pieces(tok: Any, clean: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``tok.encode(text)`` with each piece's character span, for ``clean = tok.clean_fn(text)``
    (the cleaning is the caller's, so it runs once per text)."""
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for m in tok.pat.finditer(clean):
        raw = m.group()
        # byte index -> character index inside this match (pieces split utf-8 bytes)
        byte_char: list[int] = []
        for ci, ch in enumerate(raw):
            byte_char.extend([ci] * len(ch.encode("utf-8")))
        token = "".join(tok.byte_encoder[b] for b in raw.encode("utf-8"))
        pos = 0
        for piece in tok.bpe(token).split(" "):
            ids.append(tok.encoder[piece])
            n = len(piece) - (len("</w>") if piece.endswith("</w>") else 0)  # bytes it covers
            lo, hi = byte_char[pos], byte_char[pos + n - 1]
            offsets.append((m.start() + lo, m.start() + hi + 1))
            pos += n
    return ids, offsets


def simple_tokenizer_word_ids(tok: Any, text: str) -> tuple[list[int], list[int]]:
    """Pieces of ``text`` under open_clip's ``SimpleTokenizer`` and the word of each piece.

    Words are :func:`mad_distill.align.split_words` of the original ``text``. The text is encoded
    exactly as ``tok.encode`` does (same ids) when its cleaning (ftfy, html unescape, whitespace,
    lower case) keeps the words; otherwise (e.g. ``&amp;`` unescaped, punctuation removed by
    ``canonicalize``) each word is encoded on its own, so pieces still map to words exactly.

    Returns:
        ``(ids, word_ids)`` without start/end tokens.
    """
    words = split_words(text)
    clean = tok.clean_fn(text)
    clean_words = split_words(clean)
    same = len(clean_words) == len(words) and all(
        clean[a:b].lower() == text[c:d].lower() for (a, b), (c, d) in zip(clean_words, words)
    )
    if same:
        ids, offsets = _simple_pieces(tok, clean)
        return ids, word_ids_from_offsets(offsets, clean_words)
    ids, wids = [], []
    for i, (s, e) in enumerate(words):
        piece_ids = tok.encode(text[s:e])
        ids.extend(piece_ids)
        wids.extend([i] * len(piece_ids))
    return ids, wids


def _hf_clean_fn(tok: Any) -> Callable[[str], str]:
    from open_clip.tokenizer import SigLipTokenizer, basic_clean, canonicalize_text

    if isinstance(tok, SigLipTokenizer):
        return lambda t: canonicalize_text(basic_clean(t))
    return getattr(tok, "clean_fn", lambda t: t)


class OpenCLIPTeacher(Teacher):
    """A frozen open_clip CLIP model used as MAD's image and text teacher.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` (ViT image tower for token outputs).
        preprocess: the eval image transform (PIL image -> ``[3, H, W]`` tensor), exposed as
            :attr:`preprocess`; ``None`` if the caller preprocesses.
        tokenizer: open_clip tokenizer for the model (``open_clip.get_tokenizer(name)``); default a
            ``SimpleTokenizer`` with the model's context length.
        name: model name used in :attr:`identity`.
        prompt_cache_size: how many shared candidate lists keep their encoded prompts.

    Use :meth:`from_pretrained` (or :func:`mad_distill.teachers.create_teacher`) to build one from
    a model name and weights.
    """

    kind = "open_clip"

    def __init__(
        self,
        model: nn.Module,
        preprocess: Callable | None = None,
        tokenizer: Any | None = None,
        name: str | None = None,
        prompt_cache_size: int = 32,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not hasattr(model, "encode_text"):
            raise TypeError(
                f"OpenCLIPTeacher.model must be an open_clip CLIP model, got {type(model).__name__}"
            )
        if prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must be >= 0, got {prompt_cache_size}")
        self.model = model
        self.preprocess = preprocess
        self._parts = _text_parts(model)
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=self._parts.context_length)
        self.tokenizer = tokenizer
        self.name = name or type(model).__name__
        self.prompt_cache_size = prompt_cache_size
        self._prompt_cache: OrderedDict[tuple, Tensor] = OrderedDict()
        self._freeze()

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        pretrained: str | None = None,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> OpenCLIPTeacher:
        """Build through ``open_clip.create_model_and_transforms(name, pretrained=pretrained)``.

        ``pretrained`` is a file path or an open_clip tag; ``name`` may also be
        ``local-dir:/path`` or ``hf-hub:org/repo`` (then ``pretrained`` must be ``None``).
        Errors are explained in :func:`mad_distill.teachers.factory.create_teacher`.
        """
        from mad_distill.teachers.factory import _load_open_clip

        model, preprocess, tokenizer = _load_open_clip(
            name, pretrained, device=device, precision=precision, cache_dir=cache_dir
        )
        return cls(model, preprocess=preprocess, tokenizer=tokenizer, name=name, **kwargs)

    # -- description ---------------------------------------------------------------------
    def describe(self) -> str:
        return f"open_clip:{self.name}"

    @property
    def embed_dim(self) -> int:
        """Width ``e`` of the joint image-text space."""
        visual = self.model.visual
        if getattr(visual, "output_dim", None):
            return int(visual.output_dim)
        proj = self._parts.projection
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def token_dim(self) -> int:
        """Width of the image patch tokens (the vision transformer's width)."""
        return int(self._vit().conv1.out_channels)

    @property
    def text_token_dim(self) -> int:
        """Width of the text tokens (the text transformer's width)."""
        return int(self._parts.width)

    @property
    def context_length(self) -> int:
        return int(self._parts.context_length)

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's temperature, ``exp(logit_scale)`` (scalar tensor)."""
        return self.model.logit_scale.exp().reshape(())

    def _vit(self) -> nn.Module:
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        if not isinstance(visual, VisionTransformer):
            raise NotImplementedError(
                f"patch tokens need open_clip's VisionTransformer image tower; this model's is "
                f"{type(visual).__name__} (ModifiedResNet / timm towers are not supported)"
            )
        if visual.attn_pool is not None:
            raise NotImplementedError(
                "patch tokens of image towers with an attentional pooler (CoCa) are not supported"
            )
        return visual

    # -- image ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: Tensor) -> TeacherImageOutput:
        """Encode preprocessed images.

        Args:
            images: ``[B, 3, H, W]`` preprocessed with :attr:`preprocess` (or equivalent).

        Returns:
            :class:`~mad_distill.types.TeacherImageOutput` with ``tokens [B, P, width]`` (patches,
            no CLS, row-major over ``grid``), ``grid``, ``pooled [B, e]`` (L2-normalised),
            ``tokens_joint [B, P, e]`` (not normalised) and ``attention [B, P]`` (last-layer
            CLS-query attention on each patch, mean over heads; each row sums to 1 minus the
            CLS token's attention to itself) or ``None`` for custom attention blocks.
        """
        visual = self._vit()
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be a [B, 3, H, W] tensor, got "
                f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
            )
        height, width = images.shape[-2:]
        ph, pw = visual.patch_size
        if (height, width) != tuple(visual.image_size):
            raise ValueError(
                f"images are {height}x{width} but the teacher's image tower expects "
                f"{visual.image_size[0]}x{visual.image_size[1]}: use teacher.preprocess"
            )
        images = images.to(device=visual.conv1.weight.device, dtype=visual.conv1.weight.dtype)
        block = visual.transformer.resblocks[-1]
        with _capture(block) as seen:
            pooled = self.model.encode_image(images, normalize=True)
        x_in, x_out = seen["input"], seen["output"]
        if not getattr(visual.transformer, "batch_first", True):
            x_in, x_out = x_in.transpose(0, 1), x_out.transpose(0, 1)
        tokens = visual.ln_post(x_out)[:, 1:]
        tokens_joint = _project(tokens, visual.proj)
        attention = None
        if isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            cls_pos = torch.zeros(x_in.shape[0], dtype=torch.long, device=x_in.device)
            attention = query_attention(block, x_in, cls_pos, seen["attn_mask"])[:, 1:]
        grid = (height // ph, width // pw)
        return TeacherImageOutput(
            tokens=tokens, grid=grid, pooled=pooled, tokens_joint=tokens_joint, attention=attention
        )

    # -- text ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids, validity mask and word ids for ``texts``.

        Returns:
            ``ids [B, L]`` (exactly what ``self.tokenizer(texts)`` gives), ``mask [B, L]`` bool
            (start/end tokens included), ``word_ids [B, L]`` long (words of
            :func:`~mad_distill.align.split_words`; -1 for start/end/padding), with ``L`` the
            model's context length.
        """
        _check_texts(texts, "texts")
        from open_clip.tokenizer import SimpleTokenizer

        ctx = self.context_length
        tok = self.tokenizer
        if isinstance(tok, SimpleTokenizer):
            if tok.reduction_fn is not None:
                raise NotImplementedError(
                    "word ids for SimpleTokenizer with a reduction_mask are not supported"
                )
            rows, rows_w, lengths = [], [], []
            for text in texts:
                pieces, words = simple_tokenizer_word_ids(tok, text)
                row = [tok.sot_token_id, *pieces, tok.eot_token_id]
                row_w = [-1, *words, -1]
                if len(row) > ctx:  # truncate like SimpleTokenizer.__call__
                    row, row_w = row[:ctx], row_w[:ctx]
                    row[-1], row_w[-1] = tok.eot_token_id, -1
                pad = ctx - len(row)
                rows.append(row + [0] * pad)
                rows_w.append(row_w + [-1] * pad)
                lengths.append(len(row))
            # built as lists, one tensor each (per-row tensor writes cost more than the rows)
            ids = torch.tensor(rows, dtype=torch.long).view(len(texts), ctx)
            wids = torch.tensor(rows_w, dtype=torch.long).view(len(texts), ctx)
            mask = torch.arange(ctx) < torch.tensor(lengths, dtype=torch.long).view(-1, 1)
            return ids, mask, wids
        return self._tokenize_hf(texts, ctx)

    def _tokenize_hf(self, texts: Sequence[str], ctx: int) -> tuple[Tensor, Tensor, Tensor]:
        tok = self.tokenizer
        hf = getattr(tok, "tokenizer", None)
        if hf is None or not getattr(hf, "is_fast", False):
            raise NotImplementedError(
                f"word ids need open_clip's SimpleTokenizer or a fast HF tokenizer, got "
                f"{type(tok).__name__}"
            )
        if getattr(tok, "tokenizer_mode", "") == "clips":
            raise NotImplementedError("word ids for HFTokenizer(tokenizer_mode='clips')")
        ids = tok(list(texts), context_length=ctx)
        clean = _hf_clean_fn(tok)
        cleaned = [clean(t) for t in texts]
        enc = hf(
            cleaned,
            max_length=ctx,
            padding="max_length",
            truncation=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        ref = enc["input_ids"]
        # HFTokenizer(strip_sep_token=True) zeroes the separators afterwards; nothing else differs
        same = (ref == ids) | ((ids == 0) & (ref == hf.sep_token_id))
        if ref.shape != ids.shape or not bool(same.all()):
            raise NotImplementedError(
                f"cannot recover offsets for {type(tok).__name__}: its ids differ from its HF "
                f"tokenizer's"
            )
        wids = torch.full(ids.shape, -1, dtype=torch.long)
        for i, (text, text_clean) in enumerate(zip(texts, cleaned)):
            spans = split_words(text_clean)
            if len(spans) != len(split_words(text)):
                warnings.warn(
                    f"the tokenizer's text cleaning changed the words of {text!r}; its tokens get "
                    f"word id -1 (no alignment)",
                    stacklevel=3,
                )
                continue
            offsets = [tuple(o) for o in enc["offset_mapping"][i].tolist()]
            wids[i] = torch.tensor(word_ids_from_offsets(offsets, spans))
        return ids, enc["attention_mask"].bool(), wids

    def _text_forward(
        self, ids: Tensor, keep: int, capture: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """open_clip's ``encode_text(ids, normalize=True)``, on a prefix of the context if exact.

        Args:
            ids: ``[B, L]`` token ids on the CPU (as the tokenizer returns them).
            keep: how many leading positions the caller reads besides the pooled one.
            capture: also return the last block's input, ``ln_final`` outputs and mask.

        Returns:
            ``pooled [B, e]`` (L2-normalised); with ``capture``, ``tokens [B, n, width]``
            (``ln_final`` outputs), the last block's input ``[B, n, width]`` and the mask it
            got, where ``n >= keep`` is how many positions were run (``L`` on the fallback path).
        """
        parts = self._parts
        if parts.no_prefix_reason is None:
            # a causal tower's outputs at positions < n do not depend on positions >= n (see
            # _no_prefix_reason), so the padding after the longest text need not be run; the
            # pooled position is found on the CPU ids (no device sync)
            pos = _pool_positions(ids, parts.pool_type, parts.eos_id, parts.has_cls_emb)
            n = max(keep, int(pos.max()) + 1 if pos.numel() else 1, 1)
            return self._prefix_forward(ids[:, : min(n, ids.shape[1])], capture)
        # full context: open_clip's own encode_text, reasons in _no_prefix_reason
        ids = ids.to(self.device)
        if not capture:
            return self.model.encode_text(ids, normalize=True), None, None, None
        with _capture(parts.resblocks[-1]) as seen:
            pooled = self.model.encode_text(ids, normalize=True)
        x_in, x_out = seen["input"], seen["output"]
        if not parts.batch_first:
            x_in, x_out = x_in.transpose(0, 1), x_out.transpose(0, 1)
        return pooled, parts.ln_final(x_out)[:, : ids.shape[1]], x_in, seen["attn_mask"]

    def _prefix_forward(
        self, ids: Tensor, capture: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """``CLIP.encode_text`` / ``TextTransformer.forward`` (open_clip 3.x) on ``ids [B, n]``
        with the positional table and the causal mask cut to ``n``."""
        from open_clip.transformer import text_global_pool

        parts, owner = self._parts, self._parts.owner
        ids = host_to_device(ids, self.device)
        n = ids.shape[1]
        cast_dtype = owner.transformer.get_cast_dtype()
        x = owner.token_embedding(ids).to(cast_dtype)
        x = x + owner.positional_embedding[:n].to(cast_dtype)
        mask = owner.attn_mask[:n, :n]
        seen: dict[str, Any] = {}
        with _capture(parts.resblocks[-1]) if capture else contextlib.nullcontext(seen) as seen:
            x = owner.transformer(x, attn_mask=mask)
        x = parts.ln_final(x)
        pooled = text_global_pool(x, ids, pool_type=parts.pool_type, eos_token_id=parts.eos_id)
        pooled = F.normalize(_project(pooled, parts.projection), dim=-1)
        if not capture:
            return pooled, None, None, None
        x_in = seen["input"] if parts.batch_first else seen["input"].transpose(0, 1)
        return pooled, x, x_in, seen["attn_mask"]

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> TeacherTextOutput:
        """Encode ``texts`` with CLIP's text tower.

        Returns:
            :class:`~mad_distill.types.TeacherTextOutput` with ``tokens [B, T, width]``
            (``ln_final`` outputs), ``mask``, ``word_ids``, ``pooled [B, e]`` (open_clip's
            ``encode_text``, L2-normalised), ``tokens_joint [B, T, e]`` (not normalised) and
            ``attention [B, T]`` (last-layer attention of the pooled token, mean over heads;
            rows sum to 1 for causal towers). ``T`` is the longest valid length in the batch.

        A causal text tower is run on the first ``T`` positions only (plus the pooled one, if
        later), not the whole context: the outputs are the same up to float rounding (see
        :func:`_no_prefix_reason`).
        """
        ids, mask, wids = self.tokenize(texts)
        parts = self._parts
        device = self.device
        t = max(int(mask.sum(dim=1).max()), 1) if mask.numel() else 1
        pooled, feats, x_in, attn_mask = self._text_forward(ids, t, capture=True)
        block = parts.resblocks[-1]
        attention = None
        if isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            pos = _pool_positions(ids, parts.pool_type, parts.eos_id, parts.has_cls_emb)
            attention = query_attention(block, x_in, host_to_device(pos, device), attn_mask)
            attention = attention[:, : feats.shape[1]]
        return TeacherTextOutput(
            tokens=feats[:, :t],
            mask=host_to_device(mask[:, :t], device),
            word_ids=host_to_device(wids[:, :t], device),
            pooled=pooled,
            tokens_joint=_project(feats[:, :t], parts.projection),
            attention=None if attention is None else attention[:, :t],
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """``[C, e]`` L2-normalised text embeddings of ``prompts`` (open_clip ``encode_text``;
        a causal tower runs only up to the longest prompt of each chunk)."""
        _check_texts(prompts, "prompts")
        out = []
        for i in range(0, len(prompts), _PROMPT_CHUNK):
            chunk = list(prompts[i : i + _PROMPT_CHUNK])
            ids = self.tokenizer(chunk, context_length=self.context_length)
            out.append(self._text_forward(ids, keep=0)[0])
        return torch.cat(out)

    def _shared_prompts(self, prompts: Sequence[str]) -> Tensor:
        key = (tuple(prompts), str(self.device), str(self.dtype))
        hit = self._prompt_cache.get(key)
        if hit is not None:
            self._prompt_cache.move_to_end(key)
            return hit
        emb = self.encode_prompts(prompts)
        if self.prompt_cache_size:
            self._prompt_cache[key] = emb
            while len(self._prompt_cache) > self.prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        return emb

    @torch.no_grad()
    def zero_shot_logits(
        self, image_pooled: Tensor, candidates: Sequence[str] | Sequence[Sequence[str]]
    ) -> Tensor:
        """CLIP zero-shot logits ``logit_scale · cos(image, text)`` (+ ``logit_bias`` if any).

        Args:
            image_pooled: ``[B, e]`` image embeddings (``encode_image(...).pooled``).
            candidates: one shared list of ``C`` strings (class prompts, answer vocabulary;
                encoded once and cached per list), or ``B`` lists of ``C`` strings (per-instance
                candidates such as VCR answers).

        Returns:
            ``[B, C]`` logits (softmax gives the teacher's ``p_t``).
        """
        if not isinstance(image_pooled, Tensor) or image_pooled.dim() != 2:
            raise ValueError(
                f"image_pooled must be a [B, e] tensor, got "
                f"{tuple(image_pooled.shape) if isinstance(image_pooled, Tensor) else image_pooled}"
            )
        if image_pooled.shape[1] != self.embed_dim:
            raise ValueError(
                f"image_pooled has width {image_pooled.shape[1]}, the teacher's joint space "
                f"has {self.embed_dim}"
            )
        if not isinstance(candidates, (list, tuple)) or len(candidates) == 0:
            raise ValueError("candidates must be a non-empty list of strings or of string lists")
        img = F.normalize(image_pooled.to(self.device).float(), dim=-1)
        b = img.shape[0]
        if all(isinstance(c, str) for c in candidates):
            text = self._shared_prompts(candidates).float()  # [C, e]
            logits = img @ text.T
        elif all(isinstance(c, (list, tuple)) for c in candidates):
            if len(candidates) != b:
                raise ValueError(
                    f"per-instance candidates need one list per image: got {len(candidates)} "
                    f"lists for batch {b}"
                )
            n = len(candidates[0])
            if n == 0 or any(len(c) != n for c in candidates):
                raise ValueError(
                    f"every instance needs the same non-zero number of candidates, got "
                    f"{[len(c) for c in candidates]}"
                )
            flat = [s for c in candidates for s in c]
            unique = list(dict.fromkeys(flat))
            emb = self.encode_prompts(unique).float()
            index = {s: i for i, s in enumerate(unique)}
            sel = torch.tensor([index[s] for s in flat], device=emb.device)
            text = emb[sel].view(b, n, -1)
            logits = torch.einsum("be,bce->bc", img, text)
        else:
            raise TypeError("candidates must be a list of strings or a list of string lists")
        logits = self.logit_scale.float() * logits
        bias = getattr(self.model, "logit_bias", None)
        if bias is not None:
            logits = logits + bias.float().reshape(())
        return logits


def _check_texts(texts: Any, name: str) -> None:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name} must contain only strings, got {bad[0]}")
