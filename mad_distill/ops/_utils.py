"""Shared plumbing of the Triton kernels: availability, interpreter mode, lazy JIT, backend choice
and the launch-side input checks.

Kernels are written as plain functions and handed to ``triton.jit`` on their first launch
(:class:`LazyKernel`), so ``import mad_distill`` needs no triton and compiles nothing. Whether
Triton compiles for the GPU or interprets on the CPU is fixed by ``TRITON_INTERPRET`` when triton
is first imported (``triton.language`` is built then); :func:`interpreter_enabled` reports it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

BACKENDS = ("auto", "triton", "reference")
#: dtypes the kernels read (always accumulated in fp32)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: set to 1 to check index bounds eagerly (host sync) on CUDA too
SYNC_CHECKS_ENV = "MAD_DISTILL_SYNC_CHECKS"


@functools.cache
def triton_available() -> bool:
    """True when ``triton`` imports (checked once; importing it is slow)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken install is the same as none for dispatch purposes
        return False
    return True


def _interpret_knob() -> bool:
    import triton

    knobs = getattr(triton, "knobs", None)  # triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _language_interpreted() -> bool:
    """Whether ``triton.language`` itself was built for the interpreter: its helpers
    (``tl.max``, ``tl.sum``...) are jit functions decorated when triton is first imported, in the
    mode ``TRITON_INTERPRET`` had then."""
    import triton.language as tl

    probe = getattr(getattr(tl, "standard", None), "max", None)
    return probe is None or type(probe).__name__ == "InterpretedFunction"


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter: ``TRITON_INTERPRET=1`` was set
    before triton was first imported (setting it later cannot switch ``triton.language``)."""
    if not triton_available():
        return False
    return _interpret_knob() and _language_interpreted()


class LazyKernel:
    """A kernel source function, JIT-decorated on first launch in the current Triton mode.

    ``kernel[grid](*args, **meta)`` works as for a ``@triton.jit`` function.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._jitted: dict[bool, Any] = {}
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid: Any) -> Any:
        import triton

        mode = interpreter_enabled()
        jitted = self._jitted.get(mode)
        if jitted is None:
            jitted = self._jitted[mode] = triton.jit(self.fn)
        return jitted[grid]


def resolve_backend(backend: str, op: str, *tensors: Tensor | None) -> str:
    """``"auto"`` → ``"triton"`` when every tensor is on CUDA and triton imports, else
    ``"reference"``. An explicit ``"triton"`` that cannot run raises instead of falling back."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "reference"
    if backend == "triton":
        if not triton_available():
            raise ValueError(
                f"{op}: backend='triton' was requested but triton is not installed "
                "(pip install 'mad-distill[kernels]'); use backend='reference' or 'auto'"
            )
        if not on_cuda and not interpreter_enabled():
            devices = sorted({str(t.device) for t in present})
            raise ValueError(
                f"{op}: backend='triton' needs CUDA tensors (got {devices}) or the Triton CPU "
                "interpreter (TRITON_INTERPRET=1 set before triton is first imported)"
            )
    return backend


def check_same_device(op: str, **tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listing}")


def check_kernel_dtype(op: str, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype}; the Triton kernels read float32, float16 or "
                "bfloat16 (use backend='reference' for other dtypes)"
            )


def row_contiguous(t: Tensor) -> Tensor:
    """The kernels index rows by stride but need unit stride along the last dim; a view that
    lacks it is copied (same values, one extra pass over it)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def sync_checks_enabled() -> bool:
    return os.environ.get(SYNC_CHECKS_ENV, "0") == "1"


def host_to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t.to(device)`` that does not make the host wait: a CPU tensor bound for CUDA goes
    through pinned memory with ``non_blocking`` (from pageable memory the copy would first wait
    for all queued GPU work). Anything else is a plain ``.to``."""
    if t.device.type == "cpu" and torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def require(
    ok: Tensor,
    message: str,
    exc: type[Exception] = ValueError,
    detail: Callable[[], str] | None = None,
) -> None:
    """Raise ``exc(message)`` unless every element of the bool tensor ``ok`` is true.

    On CPU (and on CUDA with ``MAD_DISTILL_SYNC_CHECKS=1``) it raises here, with ``detail()``
    appended (it may read the data). On CUDA it is by default a device-side
    ``torch._assert_async`` with ``message``: the training step's input checks cost no host
    sync; a violation surfaces as a CUDA "device-side assert" at the next synchronisation.
    """
    if ok.device.type == "cuda" and not sync_checks_enabled():
        torch._assert_async(ok.all(), message)
        return
    if not bool(ok.all()):
        raise exc(message + (detail() if detail is not None else ""))


def check_index(op: str, index: Tensor, n: int) -> None:
    """Selected positions must be ``< n`` (``-1``, or any negative, = none).

    On CPU (and on CUDA with ``MAD_DISTILL_SYNC_CHECKS=1``) this raises ``ValueError`` before any
    launch. On CUDA it is by default a device-side ``torch._assert_async``: no host sync on the
    training step's hot path; a violation then surfaces as a CUDA "device-side assert" error at
    the next synchronisation and leaves the CUDA context unusable. The kernels themselves treat
    out-of-range positions as unselected, so they never read or write outside the tensors.
    """
    if index.numel() == 0:
        return
    require(index < n, f"{op}: index has a position >= N = {n}")


def num_warps_for(block: int) -> int:
    """Warps per program by tile width (Liger-Kernel's heuristic for row-streaming kernels)."""
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
