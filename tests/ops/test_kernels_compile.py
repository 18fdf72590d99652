"""The Triton kernels compile for a real GPU target (H100, sm_90), without a GPU.

The interpreter runs the kernels' Python, not Triton's compiler, so it cannot catch what only
compilation rejects (loop-carried type changes, unsupported ops, bad constexpr use). Triton can
compile ahead of time on any machine: source -> TTIR -> TTGIR -> LLVM -> PTX -> cubin (with the
bundled ptxas). This checks every kernel in every input dtype it is launched with.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from mad_distill.ops._utils import interpreter_enabled, num_warps_for, triton_available

pytestmark = pytest.mark.skipif(
    not triton_available() or interpreter_enabled(),
    reason="needs triton in compiled mode (not the interpreter)",
)

TK = importlib.import_module("mad_distill.ops.token_kl")

# pointer / scalar types of the launch arguments (the rest are i32 ints); BLOCK and KBLOCK are
# constexpr
CASES = [
    (TK._token_kl_fwd_kernel, {"S": "*{dt}", "T": "*{dt}", "IDX": "*{it}", "KL": "*fp32",
                               "LSE_S": "*fp32", "LSE_T": "*fp32", "inv_tau": "fp32"}),
    (TK._token_kl_finish_kernel, {"KL": "*fp32", "IDX": "*{it}", "W": "*fp32", "COEF": "*fp32",
                                  "LOSS": "*fp32", "OK": "*i32", "tau_sq": "fp32"}),
    (TK._token_kl_bwd_kernel, {"S": "*{dt}", "T": "*{dt}", "G": "*{dt}", "IDX": "*{it}",
                               "LSE_S": "*fp32", "LSE_T": "*fp32", "COEF": "*fp32",
                               "GO": "*fp32", "tau": "fp32", "inv_tau": "fp32"}),
    (TK._chunk_stats_kernel, {"Z": "*{dt}", "T": "*{dt}", "IDX": "*{it}", "STATE": "*fp32",
                              "inv_tau": "fp32"}),
    (TK._chunk_grad_kernel, {"Z": "*{dt}", "T": "*{dt}", "IDX": "*{it}", "LSE_S": "*fp32",
                             "LSE_T": "*fp32", "COEF": "*fp32", "inv_tau": "fp32"}),
]  # fmt: skip


def _target():
    try:
        from triton.backends import backends
        from triton.backends.compiler import GPUTarget
    except ImportError as exc:  # pragma: no cover - very old triton
        pytest.skip(f"this triton cannot compile ahead of time: {exc}")
    if "nvidia" not in backends:
        pytest.skip("this triton build has no NVIDIA backend")
    return GPUTarget("cuda", 90, 32)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0].__name__ for c in CASES])
def test_kernel_compiles_for_sm90(case, dtype):
    import triton
    from triton.compiler import ASTSource

    target = _target()
    fn, types = CASES[case]
    block = TK.MAX_BLOCK
    for it in ("i64", "i32") if "IDX" in types else ("i64",):
        names = list(inspect.signature(fn).parameters)
        consts = {"BLOCK": block, "KBLOCK": 1024}
        consts = {n: v for n, v in consts.items() if n in names}
        sig = {
            n: "constexpr" if n in consts else types.get(n, "i32").format(dt=dtype, it=it)
            for n in names
        }
        src = ASTSource(triton.jit(fn), sig, constexprs=consts)
        kernel = triton.compile(src, target=target, options={"num_warps": num_warps_for(block)})
        assert kernel.asm["cubin"], f"{fn.__name__} produced no cubin"
        assert "ld.global" in kernel.asm["ptx"]
