"""Collection rules of the kernel tests.

``tests/ops/kernels`` holds the tests that launch the Triton kernels. They are collected in
this session only where the kernels can run here: on CUDA, or when ``TRITON_INTERPRET=1`` was set
before triton was imported (Triton builds ``triton.language`` for the interpreter or the compiler
at import, so the mode cannot be switched on for a few tests inside a session that has imported it
already). On a CPU-only machine ``test_kernels_interpreted.py`` runs that folder in a subprocess
with the interpreter on, so the rest of the suite never sees ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import torch

from mad_distill.ops._utils import interpreter_enabled

KERNELS_RUN_IN_PROCESS = torch.cuda.is_available() or interpreter_enabled()

collect_ignore = [] if KERNELS_RUN_IN_PROCESS else ["kernels"]
