"""Runs ``tests/ops/kernels`` through Triton's CPU interpreter on a machine without CUDA.

The interpreter has to be chosen before triton is imported, which this session has done already
in compiled mode, so the kernel tests run in a child pytest with ``TRITON_INTERPRET=1``. Every
kernel test must pass there: a skip counts as a failure, so the kernels cannot silently go
untested. With CUDA the folder is collected directly (tests/ops/conftest.py) and this is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mad_distill.ops._utils import interpreter_enabled, triton_available

KERNEL_TESTS = Path(__file__).parent / "kernels"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    torch.cuda.is_available() or interpreter_enabled(),
    reason="CUDA or the interpreter is on in this session: tests/ops/kernels runs directly",
)
def test_kernels_under_the_interpreter():
    if not triton_available():
        pytest.skip("triton is not installed: test_kernel_dispatch.py checks the fallbacks")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(KERNEL_TESTS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    tail = "\n".join(out.splitlines()[-60:])
    assert proc.returncode == 0, f"kernel tests failed under the interpreter:\n{tail}"
    summary = out.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 30, f"too few kernel tests ran: {summary}"
    assert "skipped" not in summary, f"kernel tests were skipped under the interpreter:\n{tail}"
