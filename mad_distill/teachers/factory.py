"""Teacher specs: the one place that turns a name into a teacher.

A spec is ``"<prefix>:<rest>"``:

* ``open_clip:<model>@<weights>`` — an open_clip model name (``open_clip.list_models()``) and
  its weights: a file (``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` / ``.npz``) or an open_clip
  pretrained tag (downloaded by open_clip, so it needs the network or open_clip's cache);
  ``open_clip:local-dir:/dir`` and ``open_clip:hf-hub:org/repo`` use open_clip's own schemas;
* ``hf:<dir or name>`` — any ``transformers.AutoModel`` (e.g. RoBERTa, MiniLM);
* ``hf-mlm:<dir or name>`` — the same through ``AutoModelForMaskedLM``, with MLM logits;
* a registered alias (:func:`register_teacher_alias`), e.g. a packaged ``world-clip``.

:func:`parse_teacher_spec` only checks the syntax (for config validation, nothing is loaded);
:func:`create_teacher` loads. New prefixes can be added with :func:`register_teacher_prefix`.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mad_distill.teachers.base import Teacher

__all__ = [
    "TeacherSpec",
    "create_teacher",
    "list_teacher_aliases",
    "list_teacher_prefixes",
    "parse_teacher_spec",
    "register_teacher_alias",
    "register_teacher_prefix",
]

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".npy", ".ckpt")
_OPEN_CLIP_SCHEMAS = ("local-dir:", "hf-hub:")


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher spec.

    Args:
        kind: the prefix (``"open_clip"``, ``"hf"``, ``"hf-mlm"``, or a registered one).
        name: model name (open_clip) or directory / hub name (HF).
        pretrained: open_clip weights (file path or tag); ``None`` otherwise.
    """

    kind: str
    name: str
    pretrained: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"@{self.pretrained}" if self.pretrained else "")


# ---- registries ------------------------------------------------------------------------------

TeacherFactory = Callable[..., Teacher]
_PREFIXES: dict[str, tuple[Callable[[str, str], TeacherSpec], TeacherFactory]] = {}
_ALIASES: dict[str, str | TeacherSpec | Callable[..., Teacher]] = {}

#: aliases of teachers that ship with the package, registered by importing their module on first
#: use (so ``create_teacher("world-clip")`` works without importing the world first)
_PACKAGED_ALIASES: dict[str, str] = {"world-clip": "mad_distill.data.world.teacher"}


def _load_packaged_alias(name: str) -> None:
    module = _PACKAGED_ALIASES.get(name)
    if module is not None and name not in _ALIASES:
        importlib.import_module(module).register_world_teacher()


def register_teacher_prefix(
    prefix: str,
    factory: TeacherFactory,
    parse: Callable[[str, str], TeacherSpec] | None = None,
) -> None:
    """Register a spec prefix.

    Args:
        prefix: the text before the first ``:`` (no ``:`` itself).
        factory: ``factory(spec: TeacherSpec, **kwargs) -> Teacher``.
        parse: ``parse(spec_string, rest) -> TeacherSpec`` validating the text after ``prefix:``
            (default: ``TeacherSpec(prefix, rest)`` with a non-empty ``rest``).
    """
    if not prefix or ":" in prefix:
        raise ValueError(f"teacher prefix must be non-empty and contain no ':', got {prefix!r}")
    _PREFIXES[prefix] = (parse or _default_parser(prefix), factory)


def register_teacher_alias(name: str, spec: str | TeacherSpec | Callable[..., Teacher]) -> None:
    """Make ``name`` a teacher spec of its own.

    Args:
        name: the alias, e.g. ``"world-clip"`` (no ``:``).
        spec: what it stands for: a spec string / :class:`TeacherSpec` (resolved when the
            teacher is created), or a zero-argument callable returning a :class:`Teacher`
            (called with ``create_teacher``'s keyword arguments).
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"teacher alias must be a non-empty string without ':', got {name!r}")
    if isinstance(spec, str):
        parse_teacher_spec(spec)  # fail at registration, not at first use
    elif not isinstance(spec, TeacherSpec) and not callable(spec):
        raise TypeError(
            f"register_teacher_alias({name!r}, ...) needs a spec string, a TeacherSpec or a "
            f"callable returning a Teacher, got {type(spec).__name__}"
        )
    _ALIASES[name] = spec


def list_teacher_prefixes() -> list[str]:
    return sorted(_PREFIXES)


def list_teacher_aliases() -> list[str]:
    return sorted(set(_ALIASES) | set(_PACKAGED_ALIASES))


def _known() -> str:
    aliases = f"; aliases: {', '.join(list_teacher_aliases())}"
    return f"known prefixes: {', '.join(p + ':' for p in list_teacher_prefixes())}{aliases}"


# ---- parsing ---------------------------------------------------------------------------------


def _default_parser(prefix: str) -> Callable[[str, str], TeacherSpec]:
    def parse(spec: str, rest: str) -> TeacherSpec:
        if not rest.strip():
            raise ValueError(f"teacher spec {spec!r}: nothing after '{prefix}:'")
        return TeacherSpec(prefix, rest)

    return parse


def _parse_open_clip(spec: str, rest: str) -> TeacherSpec:
    if rest.startswith(_OPEN_CLIP_SCHEMAS):
        schema, _, target = rest.partition(":")
        if not target or "@" in target:
            raise ValueError(
                f"teacher spec {spec!r}: open_clip:{schema}:<target> takes no '@weights' "
                f"(the weights come from the {schema} source)"
            )
        return TeacherSpec("open_clip", rest)
    name, at, pretrained = rest.partition("@")
    if not name or not at or not pretrained:
        raise ValueError(
            f"teacher spec {spec!r} must be 'open_clip:<model>@<weights file or tag>', e.g. "
            f"'open_clip:ViT-B-32@/path/weights.pt' (a teacher needs trained weights)"
        )
    return TeacherSpec("open_clip", name, pretrained)


def parse_teacher_spec(spec: str | TeacherSpec) -> TeacherSpec:
    """Check the syntax of a teacher spec and split it; loads nothing, touches no file.

    Raises:
        TypeError: ``spec`` is not a string.
        ValueError: unknown prefix / alias or malformed spec (the message names the spec and the
            known prefixes).
    """
    if isinstance(spec, TeacherSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"teacher spec must be a string, got {type(spec).__name__}")
    _load_packaged_alias(spec)
    if spec in _ALIASES:
        target = _ALIASES[spec]
        if isinstance(target, TeacherSpec):
            return target
        return TeacherSpec("alias", spec)
    prefix, colon, rest = spec.partition(":")
    if not colon:
        raise ValueError(f"teacher spec {spec!r} has no '<prefix>:' and is no alias; {_known()}")
    if prefix not in _PREFIXES:
        raise ValueError(f"teacher spec {spec!r}: unknown prefix {prefix + ':'!r}; {_known()}")
    parse, _ = _PREFIXES[prefix]
    return parse(spec, rest)


# ---- creation --------------------------------------------------------------------------------


def create_teacher(spec: str | TeacherSpec | Teacher, **kwargs: Any) -> Teacher:
    """Build the frozen teacher a spec names (a :class:`Teacher` is returned as is).

    Keyword arguments go to the teacher's ``from_pretrained`` (e.g. ``device``, ``precision``
    for open_clip; ``pooling``, ``attention``, ``max_length`` for HF).

    Raises:
        ValueError: bad spec; unknown open_clip model name (close matches listed); unknown
            open_clip tag; a checkpoint that does not fit the model.
        FileNotFoundError: a weights file or model directory that does not exist.
        RuntimeError / OSError: weights that must be downloaded while offline.
    """
    if isinstance(spec, Teacher):
        if kwargs:
            raise TypeError(f"create_teacher(teacher, ...) takes no options, got {sorted(kwargs)}")
        return spec
    parsed = parse_teacher_spec(spec)
    if parsed.kind == "alias":
        target = _ALIASES[parsed.name]
        if isinstance(target, str | TeacherSpec):
            return create_teacher(target, **kwargs)
        teacher = target(**kwargs)
        if not isinstance(teacher, Teacher):
            raise TypeError(
                f"teacher alias {parsed.name!r} returned {type(teacher).__name__}, not a Teacher"
            )
        return teacher
    if parsed.kind not in _PREFIXES:
        raise ValueError(f"teacher spec {str(parsed)!r}: unknown kind {parsed.kind!r}; {_known()}")
    _, factory = _PREFIXES[parsed.kind]
    return factory(parsed, **kwargs)


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith((".", "~"))
        or value.lower().endswith(_WEIGHT_SUFFIXES)
        or os.path.exists(value)
    )


def _load_open_clip(
    name: str,
    pretrained: str | None,
    *,
    device: Any = None,
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> tuple[Any, Any, Any]:
    """``open_clip.create_model_and_transforms`` + tokenizer, with errors a user can act on."""
    import open_clip

    if name.startswith(_OPEN_CLIP_SCHEMAS):
        schema, _, target = name.partition(":")
        if schema == "local-dir" and not os.path.isdir(os.path.expanduser(target)):
            raise FileNotFoundError(
                f"open_clip model directory not found: {target!r} (from {name!r})"
            )
    else:
        if name.replace("/", "-") not in open_clip.list_models():
            close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ValueError(
                f"unknown open_clip model {name!r}{hint} (all: open_clip.list_models(); a custom "
                f"architecture needs open_clip.add_model_config(<dir with {name}.json>) first)"
            )
        if pretrained is None:
            raise ValueError(
                f"open_clip model {name!r} needs weights: a file path or a tag such as "
                f"{open_clip.list_pretrained_tags_by_model(name)[:5]}"
            )
        if _looks_like_path(pretrained):
            pretrained = os.path.expanduser(pretrained)
            if not os.path.isfile(pretrained):
                raise FileNotFoundError(f"open_clip weights file not found: {pretrained!r}")
        elif pretrained not in open_clip.list_pretrained_tags_by_model(name):
            raise ValueError(
                f"{pretrained!r} is neither an existing weights file nor an open_clip tag for "
                f"{name!r}; known tags: {open_clip.list_pretrained_tags_by_model(name)}"
            )
    kw: dict[str, Any] = {"precision": precision}
    if device is not None:
        kw["device"] = device
    if cache_dir is not None:
        kw["cache_dir"] = cache_dir
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, **kw
        )
    except (RuntimeError, AssertionError, KeyError) as err:
        text = str(err) or type(err).__name__
        if pretrained is not None and _looks_like_path(pretrained):
            # open_clip reports a mismatched checkpoint as a load_state_dict RuntimeError (size
            # mismatch, missing / unexpected keys) or as an assert while resizing embeddings
            first = "\n".join(text.splitlines()[:6])
            raise ValueError(
                f"checkpoint {pretrained!r} does not fit open_clip model {name!r} (wrong model "
                f"name for these weights, or not an open_clip checkpoint?): {first}"
            ) from err
        if pretrained is not None:
            raise RuntimeError(
                f"could not fetch open_clip weights {name}@{pretrained} (offline?): download "
                f"them once and use 'open_clip:{name}@/path/to/weights' instead. Cause: {err}"
            ) from err
        raise
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


def _create_open_clip(spec: TeacherSpec, **kwargs: Any) -> Teacher:
    from mad_distill.teachers.clip import OpenCLIPTeacher

    return OpenCLIPTeacher.from_pretrained(spec.name, spec.pretrained, **kwargs)


def _create_hf(spec: TeacherSpec, **kwargs: Any) -> Teacher:
    from mad_distill.teachers.text import HFTextTeacher

    return HFTextTeacher.from_pretrained(spec.name, mlm=spec.kind == "hf-mlm", **kwargs)


register_teacher_prefix("open_clip", _create_open_clip, _parse_open_clip)
register_teacher_prefix("hf", _create_hf)
register_teacher_prefix("hf-mlm", _create_hf)
