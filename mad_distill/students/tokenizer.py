"""A word-level tokenizer for the built-in student.

One token per word of :func:`mad_distill.align.split_words` (lower-cased), so the student's
``word_ids`` are exactly the word indices every teacher tokenizer is reduced to. The vocabulary is
built from a corpus and saved as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from mad_distill.align import split_words

#: special tokens, in id order (``[PAD]`` is 0)
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _words(text: str) -> list[str]:
    return [text[s:e].lower() for s, e in split_words(text)]


class WordTokenizer:
    """Word-level tokenizer: ``[CLS] w_1 … w_n [SEP]`` (``[CLS] a … [SEP] b … [SEP]`` for pairs).

    Args:
        vocab: the tokens, in id order; must start with :data:`SPECIAL_TOKENS`.
        max_length: default maximum sequence length (specials included), >= 3.

    Example:
        >>> tok = WordTokenizer.build(["a red cube", "a blue ball"])
        >>> enc = tok(["A red ball?"])
        >>> enc["word_ids"].tolist()
        [[-1, 0, 1, 2, 3, -1]]
    """

    def __init__(self, vocab: Sequence[str], max_length: int = 64) -> None:
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"vocab must start with the special tokens {list(SPECIAL_TOKENS)}, "
                f"got {vocab[: len(SPECIAL_TOKENS)]}"
            )
        if len(set(vocab)) != len(vocab):
            dup = sorted(t for t, c in Counter(vocab).items() if c > 1)[:5]
            raise ValueError(f"vocab has duplicate tokens, e.g. {dup}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length must be an int >= 3, got {max_length!r}")
        self.vocab = vocab
        self.max_length = max_length
        self._index = {t: i for i, t in enumerate(vocab)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(5)

    # ---------------------------------------------------------------- building / IO
    @classmethod
    def build(
        cls,
        corpus: Iterable[str],
        min_freq: int = 1,
        max_size: int | None = None,
        max_length: int = 64,
    ) -> WordTokenizer:
        """Vocabulary of the corpus' lower-cased words, most frequent first (ties: alphabetical).

        Args:
            corpus: texts.
            min_freq: words seen fewer times are left out (they become ``[UNK]``).
            max_size: at most this many tokens in all (specials included).
            max_length: see the class.
        """
        if isinstance(corpus, str):
            raise TypeError("corpus must be an iterable of strings, not a single string")
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be an int >= 1, got {min_freq!r}")
        if max_size is not None and (
            isinstance(max_size, bool)
            or not isinstance(max_size, int)
            or max_size < len(SPECIAL_TOKENS)
        ):
            raise ValueError(
                f"max_size must be None or an int >= {len(SPECIAL_TOKENS)}, got {max_size!r}"
            )
        counts: Counter[str] = Counter()
        for i, text in enumerate(corpus):
            if not isinstance(text, str):
                raise TypeError(f"corpus[{i}] must be a string, got {type(text).__name__}")
            counts.update(_words(text))
        words = sorted(
            (w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w)
        )
        words = [w for w in words if w not in SPECIAL_TOKENS]
        if max_size is not None:
            words = words[: max_size - len(SPECIAL_TOKENS)]
        return cls(list(SPECIAL_TOKENS) + words, max_length=max_length)

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary and ``max_length`` as JSON."""
        Path(path).write_text(
            json.dumps({"vocab": self.vocab, "max_length": self.max_length}, ensure_ascii=False)
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"tokenizer file {p} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("vocab"), list):
            raise ValueError(f"tokenizer file {p} must hold an object with a 'vocab' list")
        return cls(data["vocab"], max_length=data.get("max_length", 64))

    # ---------------------------------------------------------------- encoding
    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, word: str) -> int:
        return self._index.get(word.lower(), self.unk_id)

    def encode(
        self, text: str, pair: str | None = None, max_length: int | None = None
    ) -> tuple[list[int], list[int]]:
        """Ids and word ids of one text (and optional pair) before padding.

        Word ids of ``pair`` continue after those of ``text``: they index
        ``split_words(text + " " + pair)``, the text MAD's teachers should read.
        Truncation drops words from the end (of the pair first).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        if pair is not None and not isinstance(pair, str):
            raise TypeError(f"pair must be a string or None, got {type(pair).__name__}")
        max_length = self.max_length if max_length is None else max_length
        a = _words(text)
        b = _words(pair) if pair is not None else []
        n_special = 3 if pair is not None else 2
        budget = max_length - n_special
        if budget < 0:
            raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
        # keep the first segment whole where possible: the question carries the task
        keep_b = max(0, min(len(b), budget - len(a)))
        keep_a = min(len(a), budget - keep_b)
        ids = [self.cls_id] + [self.token_id(w) for w in a[:keep_a]] + [self.sep_id]
        wids = [-1] + list(range(keep_a)) + [-1]
        if pair is not None:
            ids += [self.token_id(w) for w in b[:keep_b]] + [self.sep_id]
            wids += [len(a) + j for j in range(keep_b)] + [-1]
        return ids, wids

    def __call__(
        self,
        texts: str | Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int | None = None,
        pad_to_max: bool = False,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """Encode a batch (``device``: where the tensors go, e.g. ``self.device`` in a module).

        Returns:
            ``input_ids [B, L]`` long, ``attention_mask [B, L]`` bool and ``word_ids [B, L]`` long
            (-1 for specials and padding), padded to the longest row (or ``max_length``).
        """
        if isinstance(texts, str):
            texts = [texts]
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"pairs has {len(pairs)} entries but texts has {len(texts)}")
        max_length = self.max_length if max_length is None else max_length
        rows = [
            self.encode(t, None if pairs is None else pairs[i], max_length)
            for i, t in enumerate(texts)
        ]
        width = max_length if pad_to_max else max((len(r[0]) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        wids = torch.full((len(rows), width), -1, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (r_ids, r_wids) in enumerate(rows):
            ids[i, : len(r_ids)] = torch.tensor(r_ids)
            wids[i, : len(r_wids)] = torch.tensor(r_wids)
            mask[i, : len(r_ids)] = True
        out = {"input_ids": ids, "attention_mask": mask, "word_ids": wids}
        return out if device is None else {k: v.to(device) for k, v in out.items()}

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        """Space-joined tokens (lower-cased words; the original spacing is not kept)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        toks = [self.vocab[i] for i in ids]
        if skip_special:
            toks = [t for t in toks if t not in SPECIAL_TOKENS]
        return " ".join(toks)
