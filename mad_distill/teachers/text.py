"""HF text teacher: any ``transformers.AutoModel`` encoder (RoBERTa, BERT, MiniLM, ...), frozen.

Gives MAD (arXiv 2204.10496, §3) the text teacher's token features (feature targets), a pooled
sentence embedding, the last-layer attention of the first (CLS / ``<s>``) token (the ``attention``
score source) and, with ``mlm=True``, MLM logits over its vocabulary (token-level KL). Tokens are
tied to the words of :func:`mad_distill.align.split_words` through the fast tokenizer's character
offsets, the same way the student's tokens are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mad_distill.align import split_words, word_ids_from_offsets
from mad_distill.teachers.base import Teacher
from mad_distill.types import TeacherTextOutput

__all__ = ["HFTextTeacher"]

POOLINGS = ("mean", "cls")
# tokenizers without a real limit report a huge model_max_length
_NO_LIMIT = 1_000_000


class HFTextTeacher(Teacher):
    """A frozen HF transformer encoder as MAD's text teacher.

    Args:
        model: a ``transformers`` encoder (``AutoModel``) or masked-LM model
            (``AutoModelForMaskedLM``, then ``mlm_logits`` are returned).
        tokenizer: its *fast* tokenizer (character offsets are needed for word alignment).
        name: name used in :attr:`identity` (the directory or hub name).
        pooling: ``"mean"`` (default; mean of the valid tokens' last hidden states, special
            tokens included, as sentence-transformers pools MiniLM / MPNet) or ``"cls"`` (the
            first token's state).
        normalize: L2-normalise the pooled embedding (default True, as sentence-transformers'
            ``Normalize`` and CLIP do).
        attention: return the last-layer attention of the first token (needs the eager attention
            implementation; :meth:`from_pretrained` loads it so).
        max_length: truncation length; default the tokenizer's / model's limit.
    """

    kind = "hf"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        attention: bool = True,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"HFTextTeacher needs a fast tokenizer (character offsets for word alignment), "
                f"got {type(tokenizer).__name__}"
            )
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", type(model).__name__)
        self.pooling = pooling
        self.normalize = normalize
        self.attention = attention
        self.mlm = _is_mlm(model)
        self.max_length = max_length or _default_max_length(model.config, tokenizer)
        self._freeze()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        mlm: bool = False,
        *,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> HFTextTeacher:
        """Load ``AutoModel`` (or ``AutoModelForMaskedLM`` if ``mlm``) and ``AutoTokenizer``.

        ``name_or_path`` is a local directory (``save_pretrained`` layout) or a hub name (needs
        the network or the HF cache; set ``HF_HUB_OFFLINE=1`` to use only the cache). Other
        keyword arguments go to the constructor.
        """
        from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

        if not isinstance(name_or_path, str) or not name_or_path:
            raise ValueError(f"HF teacher needs a directory or model name, got {name_or_path!r}")
        path = os.path.expanduser(name_or_path)
        is_path = os.path.isabs(path) or path.startswith(".") or os.path.exists(path)
        if is_path and not os.path.isdir(path):
            raise FileNotFoundError(f"HF teacher directory not found: {name_or_path!r}")
        load_kw: dict[str, Any] = {}
        if kwargs.get("attention", True):
            load_kw["attn_implementation"] = "eager"  # sdpa/flash return no attention weights
        if torch_dtype is not None:
            load_kw["torch_dtype"] = torch_dtype
        auto = AutoModelForMaskedLM if mlm else AutoModel
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
            model = auto.from_pretrained(path, **load_kw)
        except OSError as err:
            where = "directory" if is_path else "hub name (offline? pass a local directory)"
            raise OSError(
                f"could not load HF teacher from {where} {name_or_path!r}: {err}"
            ) from err
        if device is not None:
            model = model.to(device)
        return cls(model, tokenizer, name=name_or_path, **kwargs)

    # -- description ---------------------------------------------------------------------
    def describe(self) -> str:
        # the architecture, not the path: a moved model directory is still the same teacher
        # (the weights fingerprint in ``identity`` tells checkpoints apart)
        prefix = "hf-mlm" if self.mlm else "hf"
        arch = getattr(self.model.config, "model_type", type(self.model).__name__)
        norm = "norm" if self.normalize else "raw"
        return f"{prefix}:{arch}[{self.pooling},{norm},max{self.max_length}]"

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def token_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Size ``V`` of the MLM logits' last dim."""
        return int(self.model.config.vocab_size)

    # -- encoding ------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenizer outputs (``input_ids``, ``attention_mask``, ...) plus ``word_ids [B, T]``."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        if not texts:
            raise ValueError("texts must not be empty")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must contain only strings")
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = enc.pop("offset_mapping")
        wids = torch.full(enc["input_ids"].shape, -1, dtype=torch.long)
        for i, text in enumerate(texts):
            rows = [tuple(o) for o in offsets[i].tolist()]
            wids[i] = torch.tensor(word_ids_from_offsets(rows, split_words(text)))
        enc["word_ids"] = wids
        return dict(enc)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> TeacherTextOutput:
        """Encode ``texts``.

        Returns:
            :class:`~mad_distill.types.TeacherTextOutput` with ``tokens [B, T, hidden]`` (last
            hidden states), ``mask`` (attention mask), ``word_ids``, ``pooled [B, hidden]``,
            ``attention [B, T]`` (first token's last-layer attention, mean over heads; ``None``
            if disabled) and ``mlm_logits [B, T, V]`` for MLM models. ``tokens_joint`` is
            ``None`` (an HF encoder has no joint image-text space).
        """
        enc = self.tokenize(texts)
        wids = enc.pop("word_ids")
        device = self.device
        inputs = {k: v.to(device) for k, v in enc.items()}
        out = self.model(
            **inputs,
            output_hidden_states=True,
            output_attentions=self.attention,
            return_dict=True,
        )
        tokens = out.hidden_states[-1]
        mask = inputs["attention_mask"].bool()
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            pooled = tokens[:, 0]
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        attention = None
        if self.attention:
            if not out.attentions or out.attentions[-1] is None:
                raise RuntimeError(
                    f"{type(self.model).__name__} returned no attention weights; load it with "
                    f"attn_implementation='eager' or pass attention=False"
                )
            attention = out.attentions[-1].float().mean(dim=1)[:, 0]
        return TeacherTextOutput(
            tokens=tokens,
            mask=mask,
            word_ids=wids.to(device),
            pooled=pooled,
            attention=attention,
            mlm_logits=out.logits if self.mlm else None,
        )


def _is_mlm(model: nn.Module) -> bool:
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None


def _default_max_length(config: Any, tokenizer: Any) -> int:
    limit = getattr(tokenizer, "model_max_length", _NO_LIMIT)
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        if "roberta" in getattr(config, "model_type", ""):
            # RoBERTa's positions start after padding_idx, two slots are never usable
            positions -= (getattr(config, "pad_token_id", 1) or 0) + 1
        limit = min(limit, positions)
    return int(min(limit, 512) if limit >= _NO_LIMIT else limit)
