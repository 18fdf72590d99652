"""The shipped world CLIP teacher: weights + SHA-256 in ``mad_distill/teachers/assets/``.

``world_clip.safetensors`` is loaded through the same path as any real CLIP checkpoint
(``open_clip.create_model_and_transforms("MAD-World-CLIP", pretrained=<file>)``) after its SHA-256
is checked against ``world_clip.json``. Importing :mod:`mad_distill.data.world` registers the
teacher alias ``"world-clip"`` so ``create_teacher("world-clip")`` works.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mad_distill._io import atomic_write_text

_ASSETS = Path(__file__).resolve().parents[2] / "teachers" / "assets"
#: the shipped weights and their checksum record
WORLD_CLIP_WEIGHTS = _ASSETS / "world_clip.safetensors"
WORLD_CLIP_CHECKSUM = _ASSETS / "world_clip.json"
WORLD_CLIP_ALIAS = "world-clip"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_path(weights: str | os.PathLike) -> Path:
    """``<dir>/<stem>.json`` beside the weights."""
    weights = Path(weights)
    return weights.with_suffix(".json")


def write_checksum(weights: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` (must hold ``"sha256"``) atomically to :func:`checksum_path`."""
    out = checksum_path(weights)
    record = dict(record)
    record["file"] = Path(weights).name
    record.pop("path", None)  # machine-specific
    atomic_write_text(out, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out


def verify_weights(
    weights: str | os.PathLike = WORLD_CLIP_WEIGHTS, checksum: str | os.PathLike | None = None
) -> str:
    """Check ``weights`` against the SHA-256 in its checksum JSON; returns the digest.

    Raises:
        FileNotFoundError: the weights or the checksum file is missing (named).
        ValueError: the checksum file is malformed, or the digest does not match (both named).
    """
    weights = Path(weights)
    checksum = Path(checksum) if checksum is not None else checksum_path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights}")
    if not checksum.is_file():
        raise FileNotFoundError(f"checksum file for {weights.name} not found: {checksum}")
    try:
        expected = json.loads(checksum.read_text())["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"checksum file {checksum} is malformed (needs a 'sha256' field)") from err
    actual = sha256_file(weights)
    if actual != expected:
        raise ValueError(
            f"weights {weights} are corrupt or do not match {checksum.name}: sha256 "
            f"{actual} != expected {expected}"
        )
    return actual


def load_world_clip(
    weights: str | os.PathLike = WORLD_CLIP_WEIGHTS,
    checksum: str | os.PathLike | None = None,
    device: Any = "cpu",
    precision: str = "fp32",
) -> tuple[Any, Any, Any]:
    """``(model, preprocess, tokenizer)`` of the checked world teacher, in eval mode, via
    ``open_clip.create_model_and_transforms``."""
    import open_clip

    from mad_distill.data.world.pretrain import register_model_config

    verify_weights(weights, checksum)
    name = register_model_config()
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(weights), device=device, precision=precision
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


def create_world_clip_teacher(
    weights: str | os.PathLike = WORLD_CLIP_WEIGHTS,
    checksum: str | os.PathLike | None = None,
    **kwargs: Any,
):
    """The world teacher as an :class:`~mad_distill.teachers.OpenCLIPTeacher` (checksum checked;
    ``kwargs`` as for ``OpenCLIPTeacher.from_pretrained``, e.g. ``device``, ``precision``)."""
    from mad_distill.data.world.pretrain import register_model_config
    from mad_distill.teachers.clip import OpenCLIPTeacher

    verify_weights(weights, checksum)
    return OpenCLIPTeacher.from_pretrained(register_model_config(), str(weights), **kwargs)


def register_world_teacher() -> None:
    """Register the ``"world-clip"`` alias with the teacher factory (idempotent)."""
    from mad_distill.teachers.factory import register_teacher_alias

    register_teacher_alias(WORLD_CLIP_ALIAS, create_world_clip_teacher)
