"""The one place where the MAD core chooses between the PyTorch references and the Triton kernels.

``losses.py`` and ``selection.py`` call :func:`call_op` with the name of an op in
:mod:`mad_distill.ops`; nothing else in the core knows how the kernels are wired.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor

BACKENDS = ("auto", "triton", "reference")


@functools.cache
def triton_available() -> bool:
    """True when ``triton`` can be imported (checked once; importing it is slow)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install is the same as none for dispatch purposes
        return False
    return True


def resolve_backend(backend: str, *tensors: Tensor | None) -> str:
    """Turn ``"auto"`` into ``"triton"`` (all given tensors on CUDA and triton importable) or
    ``"reference"``; validate explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    return "triton" if on_cuda and triton_available() else "reference"


@functools.cache
def _accepts_backend(fn: Callable[..., Any]) -> bool:
    try:
        return "backend" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def call_op(name: str, *args: Any, backend: str = "auto", **kwargs: Any) -> Any:
    """Run ``mad_distill.ops.<name>`` on the resolved backend.

    ``reference`` calls ``ops.<name>_reference``. ``triton`` calls the public ``ops.<name>`` with
    ``backend="triton"``; the op must accept that switch, otherwise there is no Triton path to run
    and we raise instead of silently running the reference.
    """
    from mad_distill import ops

    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
    resolved = resolve_backend(backend, *tensors)
    if resolved == "reference":
        return getattr(ops, f"{name}_reference")(*args, **kwargs)
    fn = getattr(ops, name)
    if _accepts_backend(fn):
        return fn(*args, backend="triton", **kwargs)
    if backend == "triton":
        raise ValueError(
            f"backend='triton' was requested but mad_distill.ops.{name} has no Triton path "
            "in this install; use backend='reference' or 'auto'"
        )
    # "auto" on CUDA with an op that has no backend switch: its public name is the best path
    return fn(*args, **kwargs)
