"""Alignment between student tokens and teacher tokens.

Text: every tokenizer's tokens are mapped to the words of :func:`split_words` (by character
offsets), so two tokenizers meet at the word level. Image: teacher patch grids are resized to the
student's grid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the words of ``text``.

    A word is a run of word characters or a single punctuation character; every tokenizer's
    pieces are reduced to these words.
    """
    return [m.span() for m in _WORD_RE.finditer(text)]


def word_ids_from_offsets(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[int]:
    """Word index for each token given its character ``offsets`` (``(0, 0)`` = special token).

    A token belongs to the word whose span contains its first non-space character; tokens that
    touch no word (special tokens, whitespace pieces) get -1.
    """
    ids: list[int] = []
    w = 0
    for start, end in offsets:
        if end <= start:
            ids.append(-1)
            continue
        # spans are sorted and tokens arrive in order, so a moving pointer suffices
        while w < len(spans) and spans[w][1] <= start:
            w += 1
        probe = w
        while probe < len(spans) and spans[probe][0] < end:
            if spans[probe][1] > start:
                break
            probe += 1
        if probe < len(spans) and spans[probe][0] < end and spans[probe][1] > start:
            ids.append(probe)
        else:
            ids.append(-1)
    return ids
