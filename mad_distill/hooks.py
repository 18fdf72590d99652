"""Capture intermediate features of any ``nn.Module`` by module path (forward hooks).

Used to expose a user model's hidden states to MAD without changing its code, e.g. the output of
``vilt.encoder.layer.11`` of a Hugging Face ViLT.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn
from torch import Tensor
from torch.utils.hooks import RemovableHandle


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that lists the nearest existing module names."""
    if not isinstance(path, str):
        raise TypeError(f"module path must be a string, got {type(path).__name__}")
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        near = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        if not near:
            # fall back to the children of the deepest prefix that exists
            parts = path.split(".")
            for i in range(len(parts) - 1, 0, -1):
                prefix = ".".join(parts[:i])
                if prefix in names:
                    near = [n for n in names if n.startswith(prefix + ".")][:5]
                    break
        hint = f"; nearest existing modules: {near}" if near else ""
        top = [n for n, _ in model.named_children()]
        raise ValueError(
            f"no submodule {path!r} in {type(model).__name__}{hint} (top-level children: {top})"
        ) from None


def _first_tensor(output: Any) -> Tensor:
    """A hooked module's main output: the tensor itself, or the first element of a tuple /
    ``ModelOutput`` (Hugging Face layers return ``(hidden_states, attentions, ...)``)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for v in output.values():
            if isinstance(v, Tensor):
                return v
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot take a tensor from a module output of type {type(output).__name__}")


class FeatureTap:
    """Forward hooks that record module outputs under names.

    Args:
        model: the model to tap.
        paths: ``{name: module path}``, paths as in ``model.named_modules()``
            (e.g. ``{"hidden": "vilt.encoder.layer.11"}``).
        select: maps a module's raw output to the tensor to keep; default: the output itself or
            the first element of a tuple.
        detach: keep detached copies (for logging); default keeps the graph so losses on the
            captured features train the model.

    Example:
        >>> with FeatureTap(model, {"h": "layers.1"}) as tap:  # doctest: +SKIP
        ...     out = model(x)
        ...     hidden = tap["h"]
    """

    def __init__(
        self,
        model: nn.Module,
        paths: Mapping[str, str],
        select: Callable[[Any], Tensor] | None = None,
        detach: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(paths, Mapping) or not paths:
            raise ValueError("paths must be a non-empty mapping {name: module path}")
        modules = {name: get_submodule(model, path) for name, path in paths.items()}
        self.paths = dict(paths)
        self.outputs: dict[str, Tensor] = {}
        self._select = select or _first_tensor
        self._detach = detach
        self._handles: list[RemovableHandle] = [
            m.register_forward_hook(self._make_hook(name)) for name, m in modules.items()
        ]

    def _make_hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            t = self._select(output)
            self.outputs[name] = t.detach() if self._detach else t

        return hook

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.paths:
            raise KeyError(f"unknown tap {name!r}; taps: {sorted(self.paths)}")
        if name not in self.outputs:
            raise KeyError(
                f"tap {name!r} ({self.paths[name]}) has not fired yet: run the forward first"
            )
        return self.outputs[name]

    def clear(self) -> None:
        """Forget the captured outputs (so stale tensors are not reused, and graphs are freed)."""
        self.outputs.clear()

    def remove(self) -> None:
        """Remove the hooks and forget the outputs. Safe to call twice."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        # the hooks go, the captured tensors stay readable after the block
        for h in self._handles:
            h.remove()
        self._handles = []
