"""Split builders shared by the embedded world and the real datasets (VQA v2, SNLI-VE, VCR).

The MAD / CLIP-TD papers do not publish their split definitions; these are ours:

- **Low-shot** (:func:`low_shot_indices`): the first ``floor(fraction · n)`` items of one seeded
  permutation of the training set, so for one seed the fractions are nested
  (1 % ⊂ 5 % ⊂ 10 % ⊂ 100 %). With ``labels`` the permutation is *stratified*: items are ordered
  so that every prefix holds each class in proportion (±1 item), and still nested.
- **Domain shift** (:func:`domain_split`): train on the items of some domains, test on the items
  of other, disjoint domains (world: image style; VCR: movie groups; ...).
- A :class:`SplitManifest` (JSON) records how a split was built and the SHA-256 of its sorted
  indices, so a run can be reproduced and checked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mad_distill._io import atomic_write_text

__all__ = [
    "SplitManifest",
    "domain_split",
    "indices_sha256",
    "low_shot_indices",
    "low_shot_size",
]

#: how :func:`low_shot_indices` builds a split (recorded in manifests)
LOW_SHOT_METHOD = "seeded-permutation-prefix"
STRATIFIED_METHOD = "stratified-seeded-permutation-prefix"


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise TypeError(f"fraction must be a number in (0, 1], got {type(fraction).__name__}")
    fraction = float(fraction)
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return fraction


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def low_shot_size(n: int, fraction: float) -> int:
    """``floor(fraction · n)`` (robust to float error, e.g. ``0.29 · 100 = 29``).

    Raises:
        ValueError: the split would be empty (names ``fraction`` and ``n``).
    """
    n = _check_int("n", n, 0)
    fraction = _check_fraction(fraction)
    k = min(n, int(math.floor(fraction * n + 1e-9)))
    if k == 0:
        raise ValueError(
            f"low-shot split is empty: fraction={fraction} of n={n} items keeps "
            f"floor({fraction} * {n}) = 0; use a larger fraction (>= {1 / max(n, 1):.3g})"
        )
    return k


def _order(n: int, seed: int, labels: Sequence[Any] | np.ndarray | None) -> np.ndarray:
    rng = np.random.default_rng([0x5B17, _check_int("seed", seed, 0)])
    if labels is None:
        return rng.permutation(n)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have one entry per item: shape ({n},), got {labels.shape}")
    classes, inverse = np.unique(labels, return_inverse=True)
    key = np.empty(n, np.float64)
    offsets = rng.uniform(0, 1, size=len(classes))
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        perm = rng.permutation(members)
        # the j-th member of class c is due at "time" (j + u_c) / n_c: every prefix of the
        # merged order is stratified to within one item per class
        key[perm] = (np.arange(len(perm)) + offsets[c]) / len(perm)
    return np.argsort(key, kind="stable")


def low_shot_indices(
    n: int,
    fraction: float,
    seed: int,
    labels: Sequence[Any] | np.ndarray | None = None,
) -> np.ndarray:
    """Indices (sorted, ``int64``) of a low-shot subset of ``range(n)``.

    Args:
        n: size of the full training set.
        fraction: in (0, 1]; the subset has ``floor(fraction · n)`` items.
        seed: non-negative int; for one seed, smaller fractions are subsets of larger ones.
        labels: optional per-item labels (``[n]``) for a class-stratified subset.

    Raises:
        ValueError / TypeError: ``fraction`` outside (0, 1], bad ``n``/``seed``/``labels``, or an
            empty subset.
    """
    k = low_shot_size(n, fraction)
    return np.sort(_order(n, seed, labels)[:k]).astype(np.int64)


def _as_domains(name: str, value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) for v in value)
    ):
        raise ValueError(f"{name} must be a domain name or a non-empty list of them, got {value!r}")
    return list(value)


def domain_split(
    domain_of: Sequence[str],
    train_domains: str | Sequence[str],
    test_domains: str | Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, test_indices)``: items whose domain is in ``train_domains`` /
    ``test_domains``.

    Raises:
        ValueError: an unknown domain (named, with the known ones), a domain on both sides, or an
            empty side.
    """
    domain_arr = np.asarray(list(domain_of), dtype=object)
    known = sorted(set(domain_arr.tolist()))
    train = _as_domains("train_domains", train_domains)
    test = _as_domains("test_domains", test_domains)
    for name, doms in (("train_domains", train), ("test_domains", test)):
        for d in doms:
            if d not in known:
                raise ValueError(f"{name}: unknown domain {d!r}; known: {known}")
    both = sorted(set(train) & set(test))
    if both:
        raise ValueError(f"domain(s) {both} are in both train_domains and test_domains")
    tr = np.flatnonzero(np.isin(domain_arr, train)).astype(np.int64)
    te = np.flatnonzero(np.isin(domain_arr, test)).astype(np.int64)
    return tr, te


def indices_sha256(indices: Sequence[int] | np.ndarray) -> str:
    """SHA-256 of the sorted indices as little-endian int64 bytes."""
    arr = np.sort(np.asarray(indices, dtype=np.int64)).astype("<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()


@dataclass
class SplitManifest:
    """How one split was made (written as JSON beside results).

    Args:
        dataset: dataset name (``"world/vqa"``, ``"vqa_v2"``, ...).
        split: which part (``"train"``, ``"test"``, ...).
        fraction: low-shot fraction (1.0 for the full set).
        seed: the split seed.
        domains: domains the split draws from (empty: all).
        n: number of items in the split.
        n_total: size of the set it was drawn from.
        sha256: :func:`indices_sha256` of the split's indices.
        method: how it was built (e.g. :data:`LOW_SHOT_METHOD`).
        extra: anything else needed to rebuild it (world seed, label field, ...).
    """

    dataset: str
    split: str
    fraction: float
    seed: int
    domains: list[str]
    n: int
    n_total: int
    sha256: str
    method: str
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_indices(
        cls,
        indices: Sequence[int] | np.ndarray,
        *,
        dataset: str,
        split: str,
        fraction: float,
        seed: int,
        n_total: int,
        method: str,
        domains: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> SplitManifest:
        return cls(
            dataset=dataset,
            split=split,
            fraction=float(fraction),
            seed=int(seed),
            domains=list(domains),
            n=int(len(indices)),
            n_total=int(n_total),
            sha256=indices_sha256(indices),
            method=method,
            extra=dict(extra or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitManifest:
        names = set(cls.__dataclass_fields__)
        missing = sorted(names - {"extra"} - set(data))
        if missing:
            raise ValueError(f"split manifest is missing field(s) {missing}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"split manifest has unknown field(s) {unknown}")
        return cls(**data)

    def verify(self, indices: Sequence[int] | np.ndarray) -> None:
        """Raise ``ValueError`` if ``indices`` are not the split this manifest describes."""
        digest = indices_sha256(indices)
        if len(indices) != self.n or digest != self.sha256:
            raise ValueError(
                f"split {self.dataset}/{self.split} (fraction={self.fraction}, seed={self.seed}) "
                f"does not match its manifest: n={len(indices)} vs {self.n}, sha256 {digest} vs "
                f"{self.sha256}"
            )

    def write(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (a crash never leaves a half-written manifest)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> SplitManifest:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"split manifest not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"split manifest {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"split manifest {path} must hold a JSON object")
        return cls.from_dict(data)
