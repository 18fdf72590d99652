"""Teacher-feature cache: run the frozen teachers once per dataset split, read them while training.

MAD's teachers are frozen (arXiv 2204.10496, §3), so their outputs on a fixed split are constants:
computing them once removes the teachers' forward passes from every training step. A cache is a
directory::

    index.json                 written last; without it the cache does not exist
    shard-00000.safetensors    rows [0, n0): token features, pooled embeddings, zero-shot logits
    shard-00001.safetensors    ...

Each shard's SHA-256 is in the index and is checked the first time the shard is read. The index
records what the cache is *of*: dataset, split, each teacher's :attr:`Teacher.identity` (name +
weights fingerprint) and a preprocessing record (:func:`preprocessing_record`: the teachers'
tokenizers, the image transform, shared zero-shot candidates). Opening a cache with other values
raises :class:`CacheError` naming the fields that differ: a stale cache is never used silently.
Every row also stores a hash of its text (and per-instance candidates), checked at lookup.

Storage: token-level tensors (``tokens``, ``tokens_joint``, ``mlm_logits``) in ``dtype`` (fp16 by
default; bf16 or fp32 possible); per-instance tensors (pooled embeddings, attention scores,
zero-shot logits) in fp32, because they decide token selection and confidence weights, where fp16
rounding could flip a top-k or sharpen a softmax. Variable-length text outputs are stored ragged
(rows concatenated, with ``offsets``) and padded per batch at lookup. Lookups return fp32 tensors.

Writing is crash-safe: each shard is written to a temporary file, fsynced and renamed; the index
is written the same way after every shard, and an existing index is removed before a rebuild, so
an interrupted build leaves no index and is refused.

Use::

    cache = build_cache("cache/vqa-train", model, train_loader, dataset="vqa", split="train",
                        preprocessing=preprocessing_record(model, image_transform=clip_preprocess))
    model.use_mad_cache(TeacherCache("cache/vqa-train", dataset="vqa", split="train",
                                     teachers=model, preprocessing=...))
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mad_distill._io import atomic_write, fsync_dir
from mad_distill.ops._utils import host_to_device
from mad_distill.types import MADBatch, TeacherImageOutput, TeacherTextOutput

__all__ = [
    "CACHE_FORMAT",
    "CacheError",
    "TeacherCache",
    "build_cache",
    "main",
    "preprocessing_record",
    "verify_cache",
]

#: version of the on-disk layout
CACHE_FORMAT = 1
INDEX_NAME = "index.json"
_SHARD_FMT = "shard-{:05d}.safetensors"
#: the teacher outputs a cache can hold (the keys of :class:`~mad_distill.mixin.MADTeacherOutputs`)
OUTPUTS = ("image", "clip_text", "text", "zero_shot")
_TEXT_OUTPUTS = ("clip_text", "text")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# fields stored in the storage dtype (the bulk); everything else per instance is fp32
_BULK_FIELDS = ("tokens", "tokens_joint", "mlm_logits")
_IMAGE_FIELDS = ("tokens", "pooled", "tokens_joint", "attention")
_TEXT_FIELDS = ("tokens", "mask", "word_ids", "pooled", "tokens_joint", "attention", "mlm_logits")
_TEXT_RAGGED = ("tokens", "mask", "word_ids", "tokens_joint", "attention", "mlm_logits")
_DEFAULT_SHARD_BYTES = 512 * 2**20


def _is_ragged(name: str) -> bool:
    """Stored as concatenated rows + ``offsets`` (variable length per example)."""
    head, _, field = name.partition(".")
    return name == "zero_shot" or (head in _TEXT_OUTPUTS and field in _TEXT_RAGGED)


class CacheError(ValueError):
    """A cache that cannot be used: missing, incomplete, corrupt, stale or not matching the run."""


# ---------------------------------------------------------------------------------------------
# what the cache is of
def _sha(data: bytes | str, n: int = 16) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()[:n]


def _stable_repr(obj: Any) -> str:
    """``repr`` without memory addresses (``<function f at 0x7f..>`` -> ``<function f>``)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def _tokenizer_record(teacher: Any) -> dict[str, Any]:
    """What a teacher's tokenizer does to a text (its weights fingerprint is in ``identity``)."""
    tok = getattr(teacher, "tokenizer", None)
    rec: dict[str, Any] = {"class": type(tok).__name__ if tok is not None else None}
    hf = tok if hasattr(tok, "backend_tokenizer") else getattr(tok, "tokenizer", None)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is not None:  # a fast HF tokenizer: its full JSON (vocab, merges, normaliser)
        rec["hf"] = _sha(backend.to_str())
    encoder = getattr(tok, "encoder", None)
    if isinstance(encoder, dict):  # open_clip SimpleTokenizer
        rec["vocab"] = len(encoder)
        rec["special"] = [getattr(tok, "sot_token_id", None), getattr(tok, "eot_token_id", None)]
    for attr in ("context_length", "max_length"):
        value = getattr(teacher, attr, None)
        if isinstance(value, int):
            rec[attr] = value
    return rec


def _teachers_of(source: Any) -> dict[str, Any]:
    teachers = getattr(source, "mad_teachers", None)
    if teachers is not None:
        return dict(teachers)
    if isinstance(source, Mapping):
        return dict(source)
    raise TypeError(
        f"teachers must be a configured MADMixin module or a {{role: teacher}} mapping, got "
        f"{type(source).__name__}"
    )


def _identities_of(source: Any) -> dict[str, str]:
    ids = getattr(source, "mad_teacher_identities", None)
    if isinstance(ids, Mapping) and ids:
        return dict(ids)
    if isinstance(source, Mapping):
        out = {}
        for role, t in source.items():
            out[role] = t if isinstance(t, str) else t.identity
        return out
    raise TypeError(
        f"teachers must be a configured MADMixin module or a {{role: teacher or identity}} "
        f"mapping, got {type(source).__name__}"
    )


def preprocessing_record(
    teachers: Any,
    *,
    image_transform: Callable | None = None,
    candidates: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON record of everything between the raw data and the teachers' inputs.

    Args:
        teachers: a configured :class:`~mad_distill.mixin.MADMixin` module or ``{role: teacher}``.
        image_transform: the image teacher's transform (e.g. open_clip's ``preprocess``); recorded
            by its ``repr`` (torchvision transforms print their sizes, interpolation, mean/std;
            functions are recorded by name only: describe them in ``extra``).
        candidates: zero-shot prompts shared by every example (VQA answers, SNLI-VE labels);
            per-instance candidates are checked per row instead.
        extra: anything else that changes the teachers' inputs (prompt template, image size,
            dataset version...), JSON-serialisable.

    Returns:
        A dict; give the same dict to :func:`build_cache` and :class:`TeacherCache`.
    """
    rec: dict[str, Any] = {
        "tokenizers": {
            role: _tokenizer_record(t) for role, t in sorted(_teachers_of(teachers).items())
        },
        "image_transform": None if image_transform is None else _stable_repr(image_transform),
        "candidates": None if candidates is None else _candidates_digest(candidates),
    }
    if extra is not None:
        try:
            json.dumps(dict(extra), sort_keys=True)
        except TypeError as err:
            raise TypeError(f"preprocessing extra must be JSON-serialisable: {err}") from None
        rec["extra"] = dict(extra)
    return rec


def _candidates_digest(candidates: Sequence[str]) -> str:
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise TypeError("candidates must be a list of strings (shared zero-shot prompts)")
    return _sha(json.dumps(list(candidates)))


def _fingerprint(record: Mapping[str, Any]) -> str:
    return _sha(json.dumps(record, sort_keys=True, default=str))


def _row_hash(text: str, candidates: Sequence[str] | None) -> int:
    payload = json.dumps([text, None if candidates is None else list(candidates)])
    return int.from_bytes(
        hashlib.blake2b(payload.encode(), digest_size=8).digest(), "little", signed=True
    )


# ---------------------------------------------------------------------------------------------
# atomic files
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# building
class _ShardWriter:
    """Collects rows (one example each, CPU tensors) and writes shards of ~``shard_bytes``."""

    def __init__(self, directory: Path, dtype: torch.dtype, shard_bytes: int) -> None:
        self.directory, self.dtype, self.shard_bytes = directory, dtype, shard_bytes
        self.rows: list[tuple[str, int, dict[str, Tensor]]] = []
        self.nbytes = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, key: str, row_hash: int, row: dict[str, Tensor]) -> None:
        self.rows.append((key, row_hash, row))
        self.nbytes += sum(t.numel() * t.element_size() for t in row.values())
        if self.nbytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        from safetensors.torch import save_file

        names = list(self.rows[0][2])
        tensors: dict[str, Tensor] = {
            "row_hash": torch.tensor([h for _, h, _ in self.rows], dtype=torch.int64)
        }
        for name in names:
            values = [r[name] for _, _, r in self.rows]
            if _is_ragged(name):
                lengths = torch.tensor([v.shape[0] for v in values], dtype=torch.int64)
                tensors[f"{name}@offsets"] = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
                tensors[name] = torch.cat(values).contiguous()
            else:
                tensors[name] = torch.stack(values).contiguous()
        path = self.directory / _SHARD_FMT.format(len(self.shards))
        keys = [k for k, _, _ in self.rows]
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "mad-cache"}))
        self.shards.append(
            {"file": path.name, "rows": len(keys), "sha256": _sha256_file(path), "keys": keys}
        )
        self.rows, self.nbytes = [], 0


def _store(name: str, value: Tensor, dtype: torch.dtype) -> Tensor:
    """CPU copy in the storage dtype: bulk features in ``dtype``, other floats fp32."""
    value = value.detach().cpu()
    if name.rpartition(".")[2] in _BULK_FIELDS:
        return value.to(dtype)
    if name.endswith(".word_ids"):
        return value.to(torch.int32)
    return value.float() if value.is_floating_point() else value


def _row_tensors(
    out: Any, b: int, dtype: torch.dtype, outputs: Sequence[str]
) -> list[dict[str, Tensor]]:
    """Split a batch's :class:`MADTeacherOutputs` into per-example CPU tensors."""
    batch: dict[str, Tensor] = {}
    lengths: dict[str, list[int]] = {}
    if "image" in outputs:
        for field in _IMAGE_FIELDS:
            if getattr(out.image, field) is not None:
                batch[f"image.{field}"] = getattr(out.image, field)
    for name in _TEXT_OUTPUTS:
        if name not in outputs:
            continue
        txt: TeacherTextOutput = getattr(out, name)
        mask = txt.mask.bool()
        # keep each row up to its last valid token: trailing padding is rebuilt at lookup
        pos = torch.arange(mask.shape[1], device=mask.device)
        lengths[name] = torch.where(mask, pos + 1, 0).amax(dim=1).tolist()
        for field in _TEXT_FIELDS:
            value = mask if field == "mask" else getattr(txt, field)
            if value is not None:
                batch[f"{name}.{field}"] = value
    if "zero_shot" in outputs:
        batch["zero_shot"] = out.zero_shot
    stored = {k: _store(k, v, dtype) for k, v in batch.items()}
    rows: list[dict[str, Tensor]] = []
    for i in range(b):
        row = {}
        for k, v in stored.items():
            head = k.partition(".")[0]
            if _is_ragged(k) and head in lengths:
                row[k] = v[i, : lengths[head][i]].clone()
            else:
                row[k] = v[i].clone()
        rows.append(row)
    return rows


def _teacher_holder(teachers: Any) -> Any:
    """A configured :class:`MADMixin` whose :meth:`mad_teacher_outputs` runs ``teachers``."""
    from mad_distill.mixin import MADMixin

    if isinstance(teachers, MADMixin):
        return teachers
    from torch import nn

    from mad_distill.config import MADConfig

    class _Holder(MADMixin, nn.Module):
        pass

    holder = _Holder()
    cfg = teachers if isinstance(teachers, MADConfig) else MADConfig(teachers=dict(teachers))
    holder.configure_mad(cfg, student_dim=1)
    return holder


def _as_mad_batch(batch: Any) -> MADBatch:
    if isinstance(batch, MADBatch):
        return batch
    mad = getattr(batch, "mad", None)
    if isinstance(mad, MADBatch):
        return mad
    raise TypeError(
        f"batches must yield MADBatch objects or batches with a .mad MADBatch (WorldBatch, "
        f"TaskBatch), got {type(batch).__name__}"
    )


def _available_outputs(teachers: Mapping[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    if "clip" in teachers:
        out += ["image", "clip_text", "zero_shot"]
    if "text" in teachers:
        out.append("text")
    return tuple(o for o in OUTPUTS if o in out)


def build_cache(
    directory: str | os.PathLike[str],
    teachers: Any,
    batches: Iterable[Any],
    *,
    dataset: str,
    split: str,
    preprocessing: Mapping[str, Any],
    outputs: Sequence[str] | None = None,
    dtype: str | torch.dtype = "fp16",
    shard_bytes: int = _DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> TeacherCache:
    """Run the teachers over ``batches`` once and write the cache.

    Args:
        directory: where the cache goes (created).
        teachers: a configured :class:`~mad_distill.mixin.MADMixin` module (its teachers are run
            exactly as :meth:`~mad_distill.mixin.MADMixin.mad_teacher_outputs` runs them in
            training), a ``{role: teacher or spec}`` mapping, or a :class:`MADConfig`.
        batches: iterable of :class:`MADBatch` (or batches with ``.mad``) with ``keys`` (unique
            over the split), ``teacher_images`` and ``candidates`` as in training.
        dataset: dataset name recorded in the index (e.g. ``"vqa-v2"``).
        split: split name (e.g. ``"train"``, ``"test/flat"``).
        preprocessing: :func:`preprocessing_record` of this pipeline.
        outputs: which of :data:`OUTPUTS` to store; default all that the teachers give
            (``zero_shot`` only when the batches carry candidates).
        dtype: storage dtype of token-level features: ``"fp16"``, ``"bf16"`` or ``"fp32"``.
        shard_bytes: approximate shard size.
        overwrite: replace an existing cache in ``directory``.
        device: where to run the teachers (default: where they are).
        progress: called with the number of rows written so far after each batch.

    Returns:
        The new cache, opened.
    """
    from mad_distill.mixin import MADMixin

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    elif dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {dtype!r}")
    for name, value in (("dataset", dataset), ("split", split)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if not isinstance(preprocessing, Mapping):
        raise TypeError(
            f"preprocessing must be a dict (see preprocessing_record), got "
            f"{type(preprocessing).__name__}"
        )
    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise ValueError(f"shard_bytes must be an int >= 1, got {shard_bytes!r}")
    holder = _teacher_holder(teachers)
    available = _available_outputs(holder.mad_teachers)
    if outputs is None:
        wanted = list(available)
    else:
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad:
            raise ValueError(f"outputs has unknown names {bad}; allowed: {OUTPUTS}")
        missing = [o for o in outputs if o not in available]
        if missing:
            raise ValueError(
                f"outputs {missing} need teachers that are not configured (roles: "
                f"{sorted(holder.mad_teachers)})"
            )
        wanted = [o for o in OUTPUTS if o in outputs]
    if "zero_shot" in wanted and "image" not in wanted:
        wanted.insert(0, "image")  # zero-shot scores are computed from the image embedding
    directory = Path(directory)
    index_path = directory / INDEX_NAME
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise CacheError(
                f"cache directory {directory} is not empty; pass overwrite=True (--overwrite) "
                f"to rebuild it"
            )
        # the index goes first: from here on the old cache is invalid, never half-valid
        index_path.unlink(missing_ok=True)
        fsync_dir(directory)
        for p in [*directory.glob("shard-*.safetensors"), *directory.glob(".*.tmp")]:
            p.unlink()  # temporary files of a killed build too
    directory.mkdir(parents=True, exist_ok=True)
    if device is not None:
        holder.to(device)

    writer = _ShardWriter(directory, dtype, shard_bytes)
    seen: set[str] = set()
    shared: list[str] | None = None
    grid: list[int] | None = None
    widths: dict[str, list[int]] = {}
    n = 0
    was_training = holder.training
    holder.eval()
    # the teachers must run, even on a module that reads another cache
    attached = holder.__dict__.pop("_mad_cache", None)
    try:
        for raw in batches:
            batch = _as_mad_batch(raw)
            b = len(batch.texts)
            if batch.keys is None:
                raise ValueError("MADBatch.keys is None: the cache stores rows by example key")
            if len(batch.keys) != b:
                raise ValueError(f"MADBatch.keys has {len(batch.keys)} keys for {b} texts")
            cands = batch.candidates
            per_instance = cands is not None and len(cands) > 0 and not isinstance(cands[0], str)
            need = set(wanted)
            if "zero_shot" in need and cands is None:
                if outputs is not None:
                    raise ValueError("outputs includes 'zero_shot' but MADBatch.candidates is None")
                wanted.remove("zero_shot")
                need.discard("zero_shot")
            if cands is not None and not per_instance:
                if shared is None:
                    shared = list(cands)
                elif list(cands) != shared:
                    raise ValueError(
                        "MADBatch.candidates (shared prompts) differ between batches; a cache "
                        "records one shared list per split"
                    )
            out = MADMixin.mad_teacher_outputs(holder, batch, frozenset(need))
            if out.image is not None:
                if grid is None:
                    grid = list(out.image.grid)
                elif list(out.image.grid) != grid:
                    raise ValueError(
                        f"image grid changed within the split: {grid} -> {out.image.grid}"
                    )
            rows = _row_tensors(out, b, dtype, sorted(need))
            for key, text, row, i in zip(batch.keys, batch.texts, rows, range(b)):
                if not isinstance(key, str) or not key:
                    raise ValueError(f"MADBatch.keys must be non-empty strings, got {key!r}")
                if key in seen:
                    raise ValueError(f"MADBatch.keys has duplicate key {key!r} within the split")
                seen.add(key)
                for name, t in row.items():
                    shape = list(t.shape[1:]) if _is_ragged(name) else list(t.shape)
                    if widths.setdefault(name, shape) != shape and name != "zero_shot":
                        raise ValueError(f"{name} changed shape within the split")
                writer.add(key, _row_hash(text, cands[i] if per_instance else None), row)
            n += b
            if progress is not None:
                progress(n)
        writer.flush()
    finally:
        holder.train(was_training)
        if attached is not None:
            holder.__dict__["_mad_cache"] = attached
    if n == 0:
        raise ValueError("batches is empty: nothing to cache")
    stored = sorted({name.split(".", 1)[0] for name in widths})
    record = dict(preprocessing)
    if shared is not None:
        rec_c = record.get("candidates")
        digest = _candidates_digest(shared)
        if rec_c is not None and rec_c != digest:
            raise CacheError(
                "preprocessing['candidates'] records other shared candidates than the batches "
                "carry; build the record with the candidates the batches use"
            )
        record["candidates"] = digest
    from mad_distill import __version__

    index = {
        "format": CACHE_FORMAT,
        "library": f"mad-distill {__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset,
        "split": split,
        "teachers": _identities_of(holder),
        "preprocessing": record,
        "fingerprint": _fingerprint(record),
        "outputs": [o for o in OUTPUTS if o in stored],
        "dtype": _DTYPE_NAMES[dtype],
        "image_grid": grid,
        "rows": n,
        "shards": writer.shards,
    }
    atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
    return TeacherCache(
        directory, dataset=dataset, split=split, teachers=holder, preprocessing=record
    )


# ---------------------------------------------------------------------------------------------
# reading
def _load_index(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"teacher-feature cache directory not found: {directory}")
    path = directory / INDEX_NAME
    if not path.is_file():
        raise CacheError(
            f"{path} not found: {directory} is not a finished teacher-feature cache (a build that "
            f"did not complete leaves no index); rebuild it with `mad-distill cache build`"
        )
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        raise CacheError(
            f"{path}: unsupported cache format "
            f"{index.get('format') if isinstance(index, dict) else None!r} "
            f"(this version reads format {CACHE_FORMAT})"
        )
    for field in ("dataset", "split", "teachers", "preprocessing", "outputs", "dtype", "shards"):
        if field not in index:
            raise CacheError(f"{path} has no {field!r} field")
    return index


def _diff(path: str, saved: Any, wanted: Any) -> list[str]:
    if isinstance(saved, Mapping) and isinstance(wanted, Mapping):
        out = []
        for k in sorted(set(saved) | set(wanted), key=str):
            out += _diff(f"{path}.{k}", saved.get(k, "(none)"), wanted.get(k, "(none)"))
        return out
    return [] if saved == wanted else [f"  {path}: cache {saved!r}, run {wanted!r}"]


#: safetensors dtype -> (numpy dtype of the same width, torch dtype); bf16 is read as int16
_ST_DTYPES: dict[str, tuple[Any, torch.dtype]] = {
    "F64": (np.float64, torch.float64),
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.int16, torch.bfloat16),
    "I64": (np.int64, torch.int64),
    "I32": (np.int32, torch.int32),
    "I16": (np.int16, torch.int16),
    "I8": (np.int8, torch.int8),
    "U8": (np.uint8, torch.uint8),
    "BOOL": (np.bool_, torch.bool),
}


class _ShardReader:
    """One shard, memory-mapped: a batch's rows are gathered in one indexing per field, reading
    only their pages, not the whole shard.

    safetensors opens and validates the file (and loads ``row_hash`` and the ragged
    ``@offsets``); the fields are then mapped with numpy at the offsets its header gives, because
    safetensors' slices take one contiguous range at a time, and a shuffled batch's rows are
    scattered (one slice per row and field cost about 14 ms per batch of 64).
    """

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        self.handle = safe_open(str(path), framework="pt")
        self.names = set(self.handle.keys())
        self.small = {
            n: self.handle.get_tensor(n)
            for n in self.names
            if n == "row_hash" or n.endswith("@offsets")
        }
        self.row_hash: list[int] = self.small["row_hash"].tolist()
        self._offsets = {n: t.numpy() for n, t in self.small.items() if n.endswith("@offsets")}
        with open(path, "rb") as f:
            (n_header,) = struct.unpack("<Q", f.read(8))
            self._header = json.loads(f.read(n_header))
        self._data_start = 8 + n_header
        self._maps: dict[str, tuple[np.ndarray, torch.dtype]] = {}

    def _map(self, name: str) -> tuple[np.ndarray, torch.dtype]:
        hit = self._maps.get(name)
        if hit is None:
            info = self._header[name]
            np_dtype, torch_dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            begin, _ = info["data_offsets"]
            if 0 in shape:  # numpy cannot map zero bytes
                arr = np.empty(shape, dtype=np_dtype)
            else:
                arr = np.memmap(
                    self.path, dtype=np_dtype, mode="r", offset=self._data_start + begin,
                    shape=shape,
                )  # fmt: skip
            hit = self._maps[name] = (arr, torch_dtype)
        return hit

    @staticmethod
    def _tensor(arr: np.ndarray, dtype: torch.dtype) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.view(dtype) if t.dtype != dtype else t

    def rows(self, name: str, rs: np.ndarray) -> Tensor:
        """Rows ``rs`` of a fixed-shape field, ``[len(rs), ...]`` (a copy)."""
        arr, dtype = self._map(name)
        return self._tensor(arr[rs], dtype)

    def lengths(self, name: str, rs: np.ndarray) -> np.ndarray:
        off = self._offsets[f"{name}@offsets"]
        return off[rs + 1] - off[rs]

    def ragged_into(self, name: str, rs: np.ndarray, out: np.ndarray) -> None:
        """Rows ``rs`` of a ragged field, each its valid length, into ``out [len(rs), L, ...]``
        (``L`` >= every length; the rest of ``out`` keeps its fill)."""
        arr, _ = self._map(name)
        off = self._offsets[f"{name}@offsets"]
        starts, lens = off[rs], off[rs + 1] - off[rs]
        pos = np.arange(out.shape[1])
        keep = pos[None, :] < lens[:, None]  # [len(rs), L]
        out[keep] = arr[(starts[:, None] + pos[None, :])[keep]]

    def field_dtype(self, name: str) -> tuple[Any, torch.dtype]:
        return _ST_DTYPES[self._header[name]["dtype"]]


#: per shard: (reader, row numbers in it, their places in the batch)
_Groups = list[tuple[_ShardReader, np.ndarray, np.ndarray]]


class TeacherCache:
    """A finished cache, checked against what the run expects, with lookups by example key.

    Args:
        directory: the cache directory (with ``index.json``).
        dataset: expected dataset name.
        split: expected split name.
        teachers: the run's teachers: a configured MADMixin module, ``{role: teacher}`` or
            ``{role: identity string}``. Must equal the cached identities role by role.
        preprocessing: the run's :func:`preprocessing_record` (must equal the cached one).
        verify: check each shard's SHA-256 the first time it is read.
        max_shards: shards kept open (memory-mapped; rows are read on demand, so a shuffled
            epoch does not load whole shards).

    Raises:
        FileNotFoundError: no such directory.
        CacheError: no index (unfinished build), bad format, or any expected value differs (the
            message lists each differing field with the cached and the expected value).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        dataset: str,
        split: str,
        teachers: Any,
        preprocessing: Mapping[str, Any],
        verify: bool = True,
        max_shards: int = 64,
    ) -> None:
        self.directory = Path(directory)
        self.index = _load_index(self.directory)
        idx = self.index
        wanted_ids = _identities_of(teachers)
        problems: list[str] = []
        problems += _diff("dataset", idx["dataset"], dataset)
        problems += _diff("split", idx["split"], split)
        problems += _diff("teachers", idx["teachers"], wanted_ids)
        pre = dict(preprocessing)
        if pre.get("candidates") is None and idx["preprocessing"].get("candidates") is not None:
            # shared candidates seen at build time; they are checked against each batch
            pre["candidates"] = idx["preprocessing"]["candidates"]
        problems += _diff(
            "preprocessing", idx["preprocessing"], json.loads(json.dumps(pre, default=str))
        )
        if problems:
            raise CacheError(
                f"teacher-feature cache {self.directory} does not match this run (stale or built "
                f"for something else); differing fields:\n" + "\n".join(problems) + "\nrebuild it "
                "with `mad-distill cache build`, or open the cache that matches"
            )
        if isinstance(max_shards, bool) or not isinstance(max_shards, int) or max_shards < 1:
            raise ValueError(f"max_shards must be an int >= 1, got {max_shards!r}")
        self.verify, self.max_shards = verify, max_shards
        self.outputs = frozenset(idx["outputs"])
        self._where: dict[str, tuple[int, int]] = {}
        for s, shard in enumerate(idx["shards"]):
            for r, key in enumerate(shard["keys"]):
                self._where[key] = (s, r)
        self._shared = idx["preprocessing"].get("candidates")
        self._loaded: OrderedDict[int, _ShardReader] = OrderedDict()
        self._verified: set[int] = set()
        self._last_shared: list[str] | None = None

    # -- facts ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    @property
    def teachers(self) -> dict[str, str]:
        """Role -> teacher identity the cache was built with."""
        return dict(self.index["teachers"])

    def __repr__(self) -> str:
        i = self.index
        return (
            f"TeacherCache({str(self.directory)!r}, dataset={i['dataset']!r}, "
            f"split={i['split']!r}, rows={len(self)}, outputs={sorted(self.outputs)}, "
            f"dtype={i['dtype']})"
        )

    def __getstate__(self) -> dict[str, Any]:  # DDP spawn / DataLoader workers: no loaded shards
        state = dict(self.__dict__)
        state["_loaded"] = OrderedDict()
        return state

    def check_teachers(self, identities: Mapping[str, str]) -> None:
        """Raise :class:`CacheError` unless ``identities`` equal the cached teachers."""
        problems = _diff("teachers", self.index["teachers"], dict(identities))
        if problems:
            raise CacheError(
                f"teacher-feature cache {self.directory} was built with other teachers:\n"
                + "\n".join(problems)
            )

    # -- shards --------------------------------------------------------------------------
    def _shard(self, s: int) -> _ShardReader:
        hit = self._loaded.get(s)
        if hit is not None:
            self._loaded.move_to_end(s)
            return hit
        info = self.index["shards"][s]
        path = self.directory / info["file"]
        if not path.is_file():
            raise CacheError(f"cache shard {path} is missing (listed in {INDEX_NAME})")
        if self.verify and s not in self._verified:
            digest = _sha256_file(path)
            if digest != info["sha256"]:
                raise CacheError(
                    f"cache shard {path} is corrupt: SHA-256 {digest[:16]}... does not match "
                    f"{INDEX_NAME} ({info['sha256'][:16]}...); rebuild the cache"
                )
            self._verified.add(s)
        try:
            reader = _ShardReader(path)
        except Exception as err:  # safetensors raises its own error types
            raise CacheError(f"cache shard {path} cannot be read: {err}") from None
        if reader.small["row_hash"].shape[0] != info["rows"]:
            raise CacheError(
                f"cache shard {path} has {reader.small['row_hash'].shape[0]} rows, "
                f"{INDEX_NAME} says {info['rows']}"
            )
        self._loaded[s] = reader
        while len(self._loaded) > self.max_shards:
            self._loaded.popitem(last=False)
        return reader

    def verify_all(self) -> None:
        """Check every shard's SHA-256 now (raises :class:`CacheError` on the first bad one)."""
        for s, info in enumerate(self.index["shards"]):
            path = self.directory / info["file"]
            if not path.is_file():
                raise CacheError(f"cache shard {path} is missing (listed in {INDEX_NAME})")
            if _sha256_file(path) != info["sha256"]:
                raise CacheError(
                    f"cache shard {path} is corrupt: SHA-256 does not match {INDEX_NAME}"
                )
            self._verified.add(s)

    # -- lookups -------------------------------------------------------------------------
    def _rows(self, keys: Sequence[str]) -> list[tuple[_ShardReader, int]]:
        missing = [k for k in keys if k not in self._where]
        if missing:
            raise CacheError(
                f"{len(missing)} key(s) of MADBatch.keys are not in the teacher-feature cache "
                f"{self.directory} ({self.index['dataset']}/{self.index['split']}), e.g. "
                f"{missing[:3]}: the batch comes from another split or the cache is stale"
            )
        out = []
        for k in keys:
            s, r = self._where[k]
            out.append((self._shard(s), r))
        return out

    @staticmethod
    def _by_shard(rows: list[tuple[_ShardReader, int]]) -> _Groups:
        """``(reader, row numbers in it, their places in the batch)`` per shard."""
        groups: dict[int, tuple[_ShardReader, list[int], list[int]]] = {}
        for i, (t, r) in enumerate(rows):
            g = groups.setdefault(id(t), (t, [], []))
            g[1].append(r)
            g[2].append(i)
        return [(t, np.asarray(rs), np.asarray(at)) for t, rs, at in groups.values()]

    @staticmethod
    def _fixed(groups: _Groups, n: int, name: str) -> Tensor:
        if len(groups) == 1:
            return groups[0][0].rows(name, groups[0][1])
        parts = [(t.rows(name, rs), at) for t, rs, at in groups]
        out = parts[0][0].new_empty((n, *parts[0][0].shape[1:]))
        for part, at in parts:
            out[torch.from_numpy(at)] = part
        return out

    @staticmethod
    def _ragged(groups: _Groups, n: int, name: str, fill: float | int) -> Tensor:
        reader = groups[0][0]
        length = max(int(t.lengths(name, rs).max()) for t, rs, _ in groups)
        np_dtype, torch_dtype = reader.field_dtype(name)
        tail = reader._map(name)[0].shape[1:]
        if torch_dtype == torch.bfloat16:  # numpy holds bf16 as its int16 bits
            fill = int(torch.tensor(fill, dtype=torch.bfloat16).view(torch.int16))
        out = np.full((n, length, *tail), fill, dtype=np_dtype)
        for t, rs, at in groups:
            block = out[at]  # fancy indexing copies: fill the block, then put it back
            t.ragged_into(name, rs, block)
            out[at] = block
        return _ShardReader._tensor(out, torch_dtype)

    def _check_rows(self, batch: MADBatch, rows: list[tuple[_ShardReader, int]]) -> None:
        cands = batch.candidates
        per_instance = cands is not None and len(cands) > 0 and not isinstance(cands[0], str)
        if cands is not None and not per_instance and self._shared is not None:
            # a list compare per batch; the digest only when the list changes
            if self._last_shared is None or list(cands) != self._last_shared:
                if _candidates_digest(cands) != self._shared:
                    raise CacheError(
                        f"MADBatch.candidates (shared prompts) differ from those the cache "
                        f"{self.directory} was built with"
                    )
                self._last_shared = list(cands)
        for i, ((t, r), text) in enumerate(zip(rows, batch.texts)):
            h = _row_hash(text, cands[i] if per_instance else None)
            if t.row_hash[r] != h:
                raise CacheError(
                    f"cache row for key {batch.keys[i]!r} was computed from another text or other "
                    f"candidates than MADBatch has now ({text!r}): the cache is stale"
                )

    def teacher_outputs(
        self,
        batch: MADBatch,
        required: Iterable[str],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Any:
        """The cached :class:`~mad_distill.mixin.MADTeacherOutputs` of ``batch`` (rows by key).

        Args:
            batch: needs ``keys``; ``texts`` / ``candidates`` are checked against the rows.
            required: which of :data:`OUTPUTS` to return (others are ``None``).
            device: where the tensors go.
            dtype: floating dtype of the returned features (fp32 by default: losses stay fp32).
        """
        from mad_distill.mixin import MADTeacherOutputs

        if not isinstance(batch, MADBatch):
            raise TypeError(f"batch must be a MADBatch, got {type(batch).__name__}")
        required = frozenset(required)
        missing = sorted(required - self.outputs)
        if missing:
            raise CacheError(
                f"the run needs teacher outputs {missing} that the cache {self.directory} does not "
                f"hold (it has {sorted(self.outputs)}); rebuild it with --outputs including them"
            )
        if batch.keys is None:
            raise ValueError(
                "MADBatch.keys is None: the teacher-feature cache looks rows up by example key"
            )
        if len(batch.keys) != len(batch.texts):
            raise ValueError(
                f"MADBatch.keys has {len(batch.keys)} keys for {len(batch.texts)} texts"
            )
        rows = self._rows(batch.keys)
        self._check_rows(batch, rows)
        groups, n = self._by_shard(rows), len(rows)

        def mv(t: Tensor) -> Tensor:
            if t.is_floating_point():
                t = t.to(dtype)
            return host_to_device(t, device) if device is not None else t

        names = rows[0][0].names
        out = MADTeacherOutputs()
        if "image" in required:
            get = {
                f: mv(self._fixed(groups, n, f"image.{f}")) if f"image.{f}" in names else None
                for f in _IMAGE_FIELDS
            }
            out.image = TeacherImageOutput(grid=tuple(self.index["image_grid"]), **get)
        for name in _TEXT_OUTPUTS:
            if name not in required:
                continue
            get = {}
            for f in _TEXT_FIELDS:
                key = f"{name}.{f}"
                if key not in names:
                    get[f] = None
                elif f == "pooled":
                    get[f] = mv(self._fixed(groups, n, key))
                else:
                    fill = False if f == "mask" else (-1 if f == "word_ids" else 0.0)
                    get[f] = mv(self._ragged(groups, n, key, fill))
            get["word_ids"] = get["word_ids"].long()
            setattr(out, name, TeacherTextOutput(**get))
        if "zero_shot" in required:
            lengths = {int(c) for t, rs, _ in groups for c in t.lengths("zero_shot", rs)}
            if len(lengths) != 1:
                raise ValueError(
                    f"cached zero-shot logits have different candidate counts {sorted(lengths)} "
                    f"within one batch"
                )
            out.zero_shot = mv(self._ragged(groups, n, "zero_shot", 0.0))
        return out


def verify_cache(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a cache's index and every shard's SHA-256; returns the index.

    Raises:
        FileNotFoundError / CacheError: naming the directory or the bad shard.
    """
    directory = Path(directory)
    index = _load_index(directory)
    for info in index["shards"]:
        path = directory / info["file"]
        if not path.is_file():
            raise CacheError(f"cache shard {path} is missing (listed in {INDEX_NAME})")
        if _sha256_file(path) != info["sha256"]:
            raise CacheError(f"cache shard {path} is corrupt: SHA-256 does not match {INDEX_NAME}")
    return index


# ---------------------------------------------------------------------------------------------
# the command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mad-distill cache",
        description="Precompute teacher features for a dataset split (safetensors shards + "
        "index.json with SHA-256), or check / describe a cache.",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="run the teachers over one split and write the cache")
    b.add_argument("--out", required=True, help="cache directory")
    b.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="ROLE=SPEC",
        help="teacher spec per role, e.g. clip=open_clip:ViT-B-32@/w.pt (repeatable); "
        "default for --world: clip=world-clip",
    )
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--world", metavar="TASK", help="an embedded-world task: vqa, snli_ve, vcr")
    src.add_argument(
        "--loader",
        metavar="MODULE:FUNCTION",
        help="a function returning (batches, dataset, split, preprocessing extra dict); it gets "
        "the teachers as its one argument",
    )
    b.add_argument("--split", default="train", help="world split: train, val or test/<domain>")
    b.add_argument("--domain", default="flat", help="world: image domain of train/val")
    b.add_argument("--fraction", type=float, default=1.0, help="world: low-shot fraction")
    b.add_argument("--seed", type=int, default=0, help="world: split seed")
    b.add_argument("--pool-size", type=int, default=10_000, help="world: training pool size")
    b.add_argument("--test-size", type=int, default=1_000, help="world: test items per domain")
    b.add_argument("--val-size", type=int, default=500, help="world: validation items")
    b.add_argument("--world-seed", type=int, default=0)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=None)
    b.add_argument("--dtype", choices=tuple(_DTYPES), default="fp16")
    b.add_argument("--shard-mb", type=int, default=512)
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument("--overwrite", action="store_true")
    v = sub.add_parser("verify", help="check the index and every shard's SHA-256")
    v.add_argument("directory")
    i = sub.add_parser("info", help="print the index summary as JSON")
    i.add_argument("directory")
    return p


def _parse_teachers(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        role, sep, spec = item.partition("=")
        if not sep or not role or not spec:
            raise ValueError(f"--teacher must be ROLE=SPEC, got {item!r}")
        out[role] = spec
    return out


def _world_source(args: argparse.Namespace, holder: Any) -> tuple[Iterable[Any], str, str, dict]:
    from mad_distill.data.world.datamodule import WorldDataModule

    clip = holder.mad_teachers.get("clip")
    dm = WorldDataModule(
        args.world,
        domain_train=args.domain,
        fraction=args.fraction,
        seed=args.seed,
        pool_size=args.pool_size,
        test_size=args.test_size,
        val_size=args.val_size,
        world_seed=args.world_seed,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        teacher_preprocess=getattr(clip, "preprocess", None),
    )
    if args.split == "train":
        dm.setup("fit")
        ds = dm.train_dataset
    elif args.split == "val":
        dm.setup("validate")
        ds = dm.val_dataset
    elif args.split.startswith("test/"):
        dm.test_domains = [args.split.split("/", 1)[1]]
        dm.setup("test")
        ds = dm.test_datasets[dm.test_domains[0]]
    else:
        raise ValueError(f"--split must be train, val or test/<domain>, got {args.split!r}")
    loader = dm._loader(ds, args.batch_size, shuffle=False)
    # the split's membership is in the keys; what changes the teachers' inputs is recorded here
    extra = {"image_transform": ds.teacher_preprocess, "world_image_size": dm.image_size}
    return loader, f"world/{args.world}", args.split, extra


def main(argv: Sequence[str] | None = None) -> int:
    """``mad-distill cache build|verify|info``."""
    args = _parser().parse_args(argv)
    if args.action == "verify":
        index = verify_cache(args.directory)
        print(f"ok: {args.directory}: {index['rows']} rows in {len(index['shards'])} shard(s)")
        return 0
    if args.action == "info":
        index = _load_index(Path(args.directory))
        summary = {k: v for k, v in index.items() if k != "shards"}
        summary["shards"] = [{k: v for k, v in s.items() if k != "keys"} for s in index["shards"]]
        print(json.dumps(summary, indent=1))
        return 0
    teachers = _parse_teachers(args.teacher)
    if args.world:
        import mad_distill.data.world  # noqa: F401  (registers the world-clip alias)

        teachers = teachers or {"clip": "world-clip"}
    if not teachers:
        raise ValueError("give at least one --teacher ROLE=SPEC")
    holder = _teacher_holder(teachers)
    if args.world:
        batches, dataset, split, extra = _world_source(args, holder)
    else:
        import importlib

        mod_name, sep, fn_name = args.loader.partition(":")
        if not sep:
            raise ValueError(f"--loader must be MODULE:FUNCTION, got {args.loader!r}")
        batches, dataset, split, extra = getattr(importlib.import_module(mod_name), fn_name)(holder)
    extra = dict(extra)
    transform = extra.pop("image_transform", None)
    candidates = extra.pop("candidates", None)
    record = preprocessing_record(
        holder, image_transform=transform, candidates=candidates, extra=extra or None
    )
    cache = build_cache(
        args.out,
        holder,
        batches,
        dataset=dataset,
        split=split,
        preprocessing=record,
        outputs=args.outputs,
        dtype=args.dtype,
        shard_bytes=args.shard_mb * 2**20,
        overwrite=args.overwrite,
        device=args.device,
    )
    size = sum((cache.directory / s["file"]).stat().st_size for s in cache.index["shards"])
    print(
        f"wrote {cache.directory}: {len(cache)} rows, outputs {sorted(cache.outputs)}, "
        f"{len(cache.index['shards'])} shard(s), {size / 2**20:.1f} MiB, dtype {args.dtype}"
    )
    return 0
