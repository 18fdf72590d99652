"""The three VLKD objectives (Dai et al., "Enabling Multimodal Generation on CLIP via
Vision-Language Knowledge Distillation", arXiv 2203.06386, §3) and BART-style span masking.

A text PLM (BART encoder-decoder, the *student*) learns from a frozen CLIP (the *teacher*):

- **TTDM**, Text-Text Distance Minimisation: the PLM's pooled, projected encoder embedding of a
  caption moves towards CLIP's text embedding of the same caption
  (:func:`text_text_distance`).
- **ITC**, Image-Text Contrastive learning: the same PLM embedding is contrasted with CLIP's image
  embeddings of the batch, symmetric InfoNCE with a learnable temperature
  (:func:`image_text_contrastive`).
- **ICTI**, Image-Conditioned Text Infilling: the decoder reconstructs the caption from a
  span-masked copy, given CLIP's image embedding projected into a prefix of encoder states
  (:func:`image_conditioned_infilling`, masks from :func:`span_mask`).

Only the paper's abstract and introduction are available here; the distance, pooling, prefix
shape and masking parameters are our design, every one configurable, defaults documented.

Shapes: ``B`` batch, ``L`` tokens, ``d`` the PLM width (``d_model``), ``e`` CLIP's joint
embedding width, ``P`` prefix length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

#: the objective names accepted by :class:`~mad_distill.vlkd.module.VLKDConfig` weights
OBJECTIVES: tuple[str, ...] = ("ttdm", "itc", "icti")
#: distances accepted by :func:`text_text_distance`
DISTANCES: tuple[str, ...] = ("l2", "l1", "cosine")
#: poolings accepted by :func:`pool_text`
POOLINGS: tuple[str, ...] = ("mean", "eos")
#: where :func:`encode_with_prefix` puts the image prefix
PREFIX_PLACES: tuple[str, ...] = ("encoder_output", "encoder_input")


def check_objective_names(names: Sequence[str], *, arg: str = "objectives") -> None:
    """Raise ``ValueError`` naming ``arg`` if any name is not one of :data:`OBJECTIVES`."""
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ValueError(f"{arg}: unknown VLKD objective(s) {unknown}; allowed: {list(OBJECTIVES)}")


def pool_text(hidden: Tensor, attention_mask: Tensor, how: str = "mean") -> Tensor:
    """Pool encoder states into one text embedding.

    Args:
        hidden: ``[B, L, d]`` encoder states.
        attention_mask: ``[B, L]`` 1/True on valid tokens (right padding).
        how: ``"mean"`` (default: mean over valid tokens) or ``"eos"`` (the state of the last valid
            token, BART's sequence-classification choice).

    Returns:
        ``[B, d]``.
    """
    if how not in POOLINGS:
        raise ValueError(f"pool: unknown pooling {how!r}; allowed: {list(POOLINGS)}")
    if hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"pool_text: hidden must be [B, L, d] and attention_mask [B, L], got "
            f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(hidden.dtype)
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        raise ValueError("pool_text: a row of attention_mask has no valid token (empty caption)")
    if how == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / counts.unsqueeze(-1)
    last = counts.long() - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _check_pair(student: Tensor, teacher: Tensor, fn: str, s_name: str, t_name: str) -> None:
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(
            f"{fn}: {s_name} and {t_name} must be [B, e], got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{fn}: batch sizes differ: {s_name} has {student.shape[0]}, {t_name} has "
            f"{teacher.shape[0]}"
        )
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"{fn}: embedding sizes differ: {s_name} has {student.shape[1]}, {t_name} has "
            f"{teacher.shape[1]}; project the student embedding to the teacher's size first "
            f"(VLKDConfig(projection='linear'))"
        )


def text_text_distance(
    student_text: Tensor, teacher_text: Tensor, distance: str = "l2", normalize: bool = True
) -> Tensor:
    """Text-Text Distance Minimisation (VLKD §3, TTDM).

    Args:
        student_text: ``[B, e]`` the PLM's pooled encoder embedding, already projected to CLIP's
            joint width ``e``.
        teacher_text: ``[B, e]`` CLIP's text embedding of the same captions (no gradient needed).
        distance: ``"l2"`` (default: squared Euclidean distance ``||s - t||²``), ``"l1"``
            (``||s - t||₁``) or ``"cosine"`` (``1 - cos``); each per pair, averaged over the
            batch (a per-pair distance, not a per-element mean, so its scale does not shrink
            with ``e`` next to the other objectives).
        normalize: L2-normalise both embeddings first (default True: CLIP compares directions,
            and its raw norms are arbitrary).

    Returns:
        scalar loss. Gradient flows to ``student_text`` only.
    """
    if distance not in DISTANCES:
        raise ValueError(
            f"distance: unknown TTDM distance {distance!r}; allowed: {list(DISTANCES)}"
        )
    _check_pair(student_text, teacher_text, "text_text_distance", "student_text", "teacher_text")
    teacher_text = teacher_text.detach().to(student_text.dtype)
    if normalize or distance == "cosine":
        student_text = F.normalize(student_text, dim=-1)
        teacher_text = F.normalize(teacher_text, dim=-1)
    diff = student_text - teacher_text
    if distance == "cosine":
        return (1.0 - (student_text * teacher_text).sum(-1)).mean()
    if distance == "l1":
        return diff.abs().sum(-1).mean()
    return diff.pow(2).sum(-1).mean()


def image_text_contrastive(
    student_text: Tensor,
    teacher_image: Tensor,
    logit_scale: Tensor,
    max_logit_scale: float = 100.0,
    loss_fn: ClipLoss | None = None,
) -> Tensor:
    """Image-Text Contrastive learning (VLKD §3, ITC): symmetric InfoNCE between the PLM's text
    embeddings and CLIP's image embeddings of the batch; pair ``i`` is the positive of row ``i``.

    Args:
        student_text: ``[B, e]`` projected PLM text embeddings.
        teacher_image: ``[B, e]`` CLIP image embeddings (no gradient needed).
        logit_scale: scalar, the learnable *log* inverse temperature (CLIP's parametrisation:
            logits are ``exp(logit_scale) * cos``, clamped at ``max_logit_scale``).
        max_logit_scale: upper clamp of ``exp(logit_scale)`` (CLIP uses 100).
        loss_fn: an ``open_clip.loss.ClipLoss`` (pass a configured one for multi-GPU gathering);
            a local one by default.

    Returns:
        scalar loss; gradient flows to ``student_text`` and ``logit_scale``.
    """
    _check_pair(
        student_text, teacher_image, "image_text_contrastive", "student_text", "teacher_image"
    )
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    if student_text.shape[0] < 2:
        raise ValueError(
            "image_text_contrastive: needs a batch of at least 2 pairs (the negatives are the "
            f"other pairs of the batch), got {student_text.shape[0]}"
        )
    loss_fn = loss_fn if loss_fn is not None else ClipLoss()
    image = F.normalize(teacher_image.detach().to(student_text.dtype), dim=-1)
    text = F.normalize(student_text, dim=-1)
    scale = logit_scale.reshape(()).exp().clamp(max=max_logit_scale)
    return loss_fn(image, text, scale)


class ImagePrefix(nn.Module):
    """Maps a CLIP image embedding to ``P`` pseudo encoder states of the PLM (VLKD §3, ICTI):
    ``prefix = LN(MLP(img_emb)).view(B, P, d)``.

    Args:
        embed_dim: CLIP's joint width ``e``.
        d_model: the PLM's width ``d``.
        prefix_len: ``P`` (default 4).
        hidden: MLP hidden width (default ``d_model``); ``0`` for a single linear layer.
        layer_norm: LayerNorm over the output states (default True: BART's encoder states are
            layer-normalised, so the prefix arrives at the decoder on the same scale).
    """

    def __init__(
        self,
        embed_dim: int,
        d_model: int,
        prefix_len: int = 4,
        hidden: int | None = None,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("d_model", d_model), ("prefix_len", prefix_len)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ImagePrefix.{name} must be a positive int, got {v!r}")
        hidden = d_model if hidden is None else hidden
        if not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"ImagePrefix.hidden must be an int >= 0, got {hidden!r}")
        self.embed_dim, self.d_model, self.prefix_len = embed_dim, d_model, prefix_len
        out = prefix_len * d_model
        if hidden == 0:
            self.mlp: nn.Module = nn.Linear(embed_dim, out)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, out)
            )
        self.norm = nn.LayerNorm(d_model) if layer_norm else nn.Identity()

    def forward(self, image_embeds: Tensor) -> Tensor:
        """``[B, e]`` → ``[B, P, d]``."""
        if image_embeds.dim() != 2 or image_embeds.shape[1] != self.embed_dim:
            raise ValueError(
                f"ImagePrefix: image_embeds must be [B, {self.embed_dim}], got "
                f"{tuple(image_embeds.shape)}"
            )
        x = self.mlp(image_embeds)
        return self.norm(x.view(image_embeds.shape[0], self.prefix_len, self.d_model))


def prefix_encoder_outputs(
    encoder_hidden: Tensor, attention_mask: Tensor, prefix: Tensor | None
) -> tuple[BaseModelOutput, Tensor]:
    """Prepend image-prefix states to the encoder output of the (masked) text.

    Args:
        encoder_hidden: ``[B, L, d]`` the PLM encoder's last hidden state.
        attention_mask: ``[B, L]`` the text's attention mask.
        prefix: ``[B, P, d]`` from :class:`ImagePrefix`, or None (text only).

    Returns:
        ``(BaseModelOutput(last_hidden_state=[B, P + L, d]), attention_mask [B, P + L])``, ready
        for the decoder's cross-attention (``model(encoder_outputs=..., attention_mask=...)`` or
        ``model.generate(...)``).
    """
    if prefix is None:
        return BaseModelOutput(last_hidden_state=encoder_hidden), attention_mask
    if prefix.dim() != 3 or prefix.shape[0] != encoder_hidden.shape[0]:
        raise ValueError(
            f"prefix must be [B, P, d] with B = {encoder_hidden.shape[0]}, got "
            f"{tuple(prefix.shape)}"
        )
    if prefix.shape[2] != encoder_hidden.shape[2]:
        raise ValueError(
            f"prefix width {prefix.shape[2]} differs from the encoder's d_model "
            f"{encoder_hidden.shape[2]}"
        )
    hidden = torch.cat([prefix.to(encoder_hidden.dtype), encoder_hidden], dim=1)
    ones = attention_mask.new_ones(prefix.shape[:2])
    return BaseModelOutput(last_hidden_state=hidden), torch.cat([ones, attention_mask], dim=1)


def encode_with_prefix(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    prefix: Tensor | None,
    prefix_at: str = "encoder_output",
) -> tuple[BaseModelOutput, Tensor]:
    """Run the PLM encoder on text with the image prefix, for the decoder's cross-attention.

    Args:
        model: a ``transformers`` encoder-decoder (``BartForConditionalGeneration``).
        input_ids / attention_mask: ``[B, L]`` the (masked) text.
        prefix: ``[B, P, d]`` image prefix, or None (text only).
        prefix_at: ``"encoder_output"`` (default): the prefix states are concatenated before
            the encoder's output states of the text (:func:`prefix_encoder_outputs`), the
            encoder reads text only; ``"encoder_input"``: the prefix is concatenated before the
            token embeddings and the encoder reads both (its self-attention mixes the image
            into the text states).

    Returns:
        ``(BaseModelOutput [B, P + L, d], attention_mask [B, P + L])``.
    """
    if prefix_at not in PREFIX_PLACES:
        raise ValueError(f"prefix_at: unknown place {prefix_at!r}; allowed: {list(PREFIX_PLACES)}")
    encoder = model.get_encoder()
    if prefix is None or prefix_at == "encoder_output":
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return prefix_encoder_outputs(hidden, attention_mask, prefix)
    embeds = model.get_input_embeddings()(input_ids)  # BART scales inside its embedding
    if (
        prefix.dim() != 3
        or prefix.shape[0] != embeds.shape[0]
        or prefix.shape[2] != embeds.shape[2]
    ):
        raise ValueError(
            f"prefix must be [B, P, d] = [{embeds.shape[0]}, P, {embeds.shape[2]}], got "
            f"{tuple(prefix.shape)}"
        )
    embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
    attn = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)
    hidden = encoder(inputs_embeds=embeds, attention_mask=attn).last_hidden_state
    return BaseModelOutput(last_hidden_state=hidden), attn


def image_conditioned_infilling(
    model: nn.Module,
    masked_ids: Tensor,
    masked_attention: Tensor,
    labels: Tensor,
    prefix: Tensor | None,
    prefix_at: str = "encoder_output",
) -> Tensor:
    """Image-Conditioned Text Infilling (VLKD §3, ICTI): cross-entropy of the decoder
    reconstructing the original caption from its span-masked copy, given the image prefix
    (:func:`encode_with_prefix`).

    Args:
        model: a ``transformers`` encoder-decoder LM (``BartForConditionalGeneration``).
        masked_ids: ``[B, L']`` span-masked caption ids (:func:`span_mask`).
        masked_attention: ``[B, L']`` their attention mask.
        labels: ``[B, L]`` the original caption ids, padding set to ``-100``; the model shifts
            them right to form the decoder input.
        prefix: ``[B, P, d]`` image prefix, or None for the text-only infilling loss (used to
            measure how much text ability the PLM keeps).
        prefix_at: ``"encoder_output"`` (default) or ``"encoder_input"``.

    Returns:
        scalar mean token cross-entropy.
    """
    if labels.dim() != 2 or masked_ids.dim() != 2 or labels.shape[0] != masked_ids.shape[0]:
        raise ValueError(
            f"image_conditioned_infilling: masked_ids [B, L'] and labels [B, L] must share B, "
            f"got {tuple(masked_ids.shape)} and {tuple(labels.shape)}"
        )
    enc_out, attn = encode_with_prefix(model, masked_ids, masked_attention, prefix, prefix_at)
    out = model(encoder_outputs=enc_out, attention_mask=attn, labels=labels)
    return out.loss


def span_mask(
    input_ids: Tensor,
    attention_mask: Tensor,
    mask_token_id: int,
    pad_token_id: int,
    special_ids: Sequence[int] = (),
    ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BART text infilling (Lewis et al. 2020, §2.2): replace spans of tokens, lengths drawn from
    ``Poisson(poisson_lambda)``, each by a single mask token, until ``round(ratio · n)`` of the
    ``n`` maskable tokens of a row are covered (at least one when ``ratio > 0``).

    Our choices where BART leaves freedom: span lengths are clipped to at least 1 (no zero-length
    insertions) and to the budget left; spans never touch each other (so each mask token stands
    for exactly one span); special tokens (``special_ids``, e.g. ``<s>``, ``</s>``) and padding are
    never masked.

    Args:
        input_ids: ``[B, L]`` right-padded ids.
        attention_mask: ``[B, L]`` 1 on valid tokens.
        mask_token_id: the tokenizer's mask id.
        pad_token_id: the id used to pad the output.
        special_ids: ids never masked.
        ratio: fraction of maskable tokens to cover, in ``[0, 1)``.
        poisson_lambda: mean span length (> 0).
        generator: a ``torch.Generator`` for reproducible masks.

    Returns:
        ``(masked_ids [B, L'], masked_attention [B, L'])`` with ``L' <= L``, right-padded.
    """
    if input_ids.dim() != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"span_mask: input_ids and attention_mask must both be [B, L], got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
    if not poisson_lambda > 0:
        raise ValueError(f"poisson_lambda must be > 0, got {poisson_lambda}")
    special = set(int(i) for i in special_ids) | {int(pad_token_id), int(mask_token_id)}
    rows: list[list[int]] = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b][attention_mask[b].bool()].tolist()
        maskable = [i for i, t in enumerate(ids) if t not in special]
        if not maskable:
            raise ValueError(f"span_mask: caption {b} has no maskable token (empty caption)")
        rows.append(_mask_row(ids, maskable, mask_token_id, ratio, poisson_lambda, generator))
    width = max(len(r) for r in rows)
    out = input_ids.new_full((len(rows), width), pad_token_id)
    att = attention_mask.new_zeros((len(rows), width))
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=input_ids.dtype)
        att[b, : len(r)] = 1
    return out, att


def _mask_row(
    ids: list[int],
    maskable: list[int],
    mask_id: int,
    ratio: float,
    lam: float,
    gen: torch.Generator | None,
) -> list[int]:
    n = len(maskable)
    budget = 0 if ratio == 0 else max(1, int(round(ratio * n)))
    covered = [False] * len(ids)
    ok = set(maskable)

    def fits(s: int, length: int) -> bool:
        # maskable, unmasked tokens, and not touching another span on either side
        if s > 0 and covered[s - 1]:
            return False
        if s + length < len(ids) and covered[s + length]:
            return False
        return all((s + j) in ok and not covered[s + j] for j in range(length))

    left = budget
    rate = torch.tensor([lam], dtype=torch.float)
    while left > 0:
        length = min(max(int(torch.poisson(rate, generator=gen).item()), 1), left)
        starts: list[int] = []
        while length >= 1:
            starts = [s for s in range(len(ids) - length + 1) if fits(s, length)]
            if starts:
                break
            length -= 1
        if not starts:
            break  # no room for a separate span: stop short of the budget rather than merge
        s = starts[int(torch.randint(len(starts), (1,), generator=gen).item())]
        for j in range(length):
            covered[s + j] = True
        left -= length
    out: list[int] = []
    for i, t in enumerate(ids):
        if covered[i]:
            if not (i > 0 and covered[i - 1]):
                out.append(mask_id)
        else:
            out.append(t)
    return out


def logit_scale_init(temperature: float) -> float:
    """CLIP's log inverse temperature for an initial ``temperature`` (> 0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return math.log(1.0 / temperature)
