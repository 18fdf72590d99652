"""The one place where the MAD core chooses between the PyTorch references and the Triton kernels.

``losses.py`` and ``selection.py`` call :func:`call_op` with the name of an op in
:mod:`mad_distill.ops`; nothing else in the core knows how the kernels are wired.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor

BACKENDS = ("auto", "triton", "reference")


def resolve_backend(backend: str, *tensors: Tensor | None) -> str:
    """Turn ``"auto"`` into ``"triton"`` (all given tensors on CUDA and triton importable) or
    ``"reference"``; validate explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if not on_cuda:
        return "reference"
    # ops owns the triton check; imported here, not at module level, because loading
    # mad_distill.ops imports triton (slow) and CPU-only use should not pay for it
    from mad_distill.ops._utils import triton_available

    return "triton" if triton_available() else "reference"


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
