#!/usr/bin/env python
"""Kernel benchmark of the MAD core (DESIGN.md section 4, issue 5). Not a test.

    python benchmarks/kernels.py --out benchmarks/results          # on a CUDA GPU
    python benchmarks/kernels.py --out /tmp/kbench --dry-run       # tiny shapes on the CPU

Measures, side by side in one run, forward + backward of the selected-token KL for

* ``eager``   - gather + log_softmax + kl_div + per-instance weighting in PyTorch,
* ``compile`` - ``torch.compile`` of the same function,
* ``liger``   - gather + log_softmax in PyTorch, then Liger-Kernel's ``LigerKLDIVLoss``
  (``log_target=True``, ``batchmean``; Liger has no per-row weights, so it gets the easier,
  unweighted problem),
* ``ours``    - ``mad_distill.ops.token_kl(backend="triton")`` (plus a sweep of its tile width),

at ``B*N = 8192`` tokens, ``k = 25 %``, ``C`` in {768, 32000, 50265}, bf16 and fp32; and the
fused-linear variant (``d = 768``, ``C = 50265``) against eager ``linear + KL`` (head over all
tokens, and head over the selected tokens only). Also: device-to-device copy bandwidth, and the
two ops left eager (``select_tokens``: stable sort vs ``torch.topk``; ``feature_loss``).

Figures: median fwd+bwd time (``triton.testing.do_bench``), achieved GB/s = bytes that must move
/ time, where bytes = read the selected rows of student and teacher logits once + write the
``[B, N, C]`` student gradient once (DESIGN.md section 4), and peak memory above the inputs
(``torch.cuda.max_memory_allocated`` minus what was allocated before the call). Results go to
``<out>/kernels-<device>.json`` (device, versions, date, every figure, the issue's targets) and a
plot ``<out>/kernels-<device>.png``.

``--dry-run`` runs every code path on the CPU with tiny shapes (Triton through its interpreter,
``torch.compile`` with the ``eager`` backend, Liger through the interpreter if installed) and
wall-clock timing; its numbers mean nothing, it only shows the script runs through.
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # must precede the first import of triton (it fixes the mode then)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mad_distill import ops  # noqa: E402

TOKEN_KL_MODULE = importlib.import_module("mad_distill.ops.token_kl")

TAU = 2.0
LAMBDA = 0.5  # the loss is always scaled (lambda_kl), so grad_output != 1 as in training
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

FULL = dict(
    b=8, n=1024, k=256, widths=(768, 32000, 50265), fl_d=768, fl_c=50265,
    select_shapes=((8, 1024), (64, 237), (256, 237)), feat_d=768, copy_bytes=1 << 30,
    blocks=(2048, 4096, 8192), warps=(4, 8, 16), rounds=3,
)  # fmt: skip
DRY = dict(
    b=2, n=16, k=4, widths=(7, 130), fl_d=8, fl_c=37,
    select_shapes=((2, 16),), feat_d=8, copy_bytes=1 << 20, blocks=(16, 64), warps=(4,), rounds=2,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the implementations compared


def eager_token_kl(s, t, index, weights, tau: float = TAU):
    """The eager op: gather the selected rows, log_softmax both at tau, kl_div, weight, reduce.
    (``token_kl_reference`` minus its validation, whose bound check syncs the host.)"""
    b, _, c = s.shape
    valid = index >= 0
    gather = index.clamp(min=0).unsqueeze(-1).expand(-1, -1, c)
    log_p_s = F.log_softmax(torch.gather(s, 1, gather).float() / tau, dim=-1)
    log_p_t = F.log_softmax(torch.gather(t, 1, gather).float() / tau, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1) * valid
    per_instance = kl.sum(1) / valid.sum(1).clamp(min=1)
    return (tau * tau) * (weights.float() * per_instance).sum() / b


def liger_token_kl_factory():
    from liger_kernel.transformers import LigerKLDIVLoss

    loss_fn = LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def liger_token_kl(s, t, index, weights, tau: float = TAU):
        c = s.shape[-1]
        gather = index.clamp(min=0).unsqueeze(-1).expand(-1, -1, c)
        log_p_s = F.log_softmax(torch.gather(s, 1, gather).float() / tau, dim=-1)
        log_p_t = F.log_softmax(torch.gather(t, 1, gather).float() / tau, dim=-1)
        return (tau * tau) * loss_fn(log_p_s.view(-1, c), log_p_t.view(-1, c))

    return liger_token_kl


def ours_token_kl(s, t, index, weights, tau: float = TAU):
    return ops.token_kl(s, t, index, weights, tau, backend="triton")


def eager_linear_full(h, w, bias, t, index, weights, tau: float = TAU):
    """Head over every token, then the eager KL: ``[B, N, C]`` logits exist."""
    return eager_token_kl(F.linear(h, w, bias), t, index, weights, tau)


def eager_linear_selected(h, w, bias, t, index, weights, tau: float = TAU):
    """Select first, head over the selected tokens only: ``[B*k, C]`` logits exist."""
    b, k = index.shape
    pos = index.clamp(min=0)
    rows = torch.arange(b, device=h.device).unsqueeze(1)
    logits = F.linear(h[rows, pos], w, bias)  # [B, k, C]
    t_sel = t[rows, pos]
    slot = torch.arange(k, device=h.device).expand(b, k)
    return eager_token_kl(logits, t_sel, torch.where(index >= 0, slot, -1), weights, tau)


def ours_linear(h, w, bias, t, index, weights, tau: float = TAU):
    return ops.fused_linear_token_kl(h, w, bias, t, index, weights, tau, backend="triton")


# ---------------------------------------------------------------------------------------------
# measuring


class Timer:
    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def time_ms(self, fn: Callable[[], Any], grad_to_none: list[torch.Tensor]) -> float:
        if self.cuda:
            from triton.testing import do_bench

            return float(do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))
        times = []
        for _ in range(3):
            for g in grad_to_none:
                g.grad = None
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def peak_mb(self, fn: Callable[[], Any], grad_to_none: list[torch.Tensor]) -> float | None:
        for g in grad_to_none:
            g.grad = None
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        for g in grad_to_none:
            g.grad = None
        return peak / 2**20


def _fwd_bwd(loss_fn: Callable[..., torch.Tensor], *args: Any) -> Callable[[], None]:
    def run() -> None:
        (LAMBDA * loss_fn(*args)).backward()

    return run


def measure_many(
    timer: Timer,
    runs: dict[str, Callable[[], None]],
    params: list[torch.Tensor],
    rounds: int,
) -> list[dict[str, Any]]:
    """Times each fwd+bwd ``run`` in ``rounds`` interleaved rounds (so clock and allocator drift
    hit every implementation alike) and reports the median of the rounds' medians with their
    min-max; then peak memory, one run each. A failing run is reported, not fatal."""

    def clear() -> None:
        for p in params:
            p.grad = None

    out: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        try:
            run()  # warm-up: JIT / torch.compile / autotuning happen here
            out[name] = {"impl": name, "ms_rounds": []}
        except Exception as exc:  # one failing implementation must not lose the others' figures
            traceback.print_exc()
            out[name] = {"impl": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
        finally:
            clear()
    live = [n for n in runs if "error" not in out[n]]
    for _ in range(rounds):
        for name in live:
            clear()
            out[name]["ms_rounds"].append(timer.time_ms(runs[name], params))
    for name in live:
        r = out[name]
        r["ms"] = statistics.median(r["ms_rounds"])
        r["peak_mb_above_inputs"] = timer.peak_mb(runs[name], params)
        clear()
    if timer.cuda:
        torch.cuda.empty_cache()
    return [out[n] for n in runs]


def with_kernel_config(run: Callable[[], None], block: int, warps: int | None):
    """``run`` with token_kl's widest tile set to ``block`` and, if given, ``warps`` warps per
    program (module globals read at launch; restored after)."""

    def configured() -> None:
        saved = TOKEN_KL_MODULE.MAX_BLOCK, TOKEN_KL_MODULE.num_warps_for
        TOKEN_KL_MODULE.MAX_BLOCK = block
        if warps is not None:
            TOKEN_KL_MODULE.num_warps_for = lambda _block: warps
        try:
            run()
        finally:
            TOKEN_KL_MODULE.MAX_BLOCK, TOKEN_KL_MODULE.num_warps_for = saved

    return configured


def loss_and_grads(loss_fn, args, params) -> tuple[float, list[torch.Tensor]]:
    for p in params:
        p.grad = None
    loss = loss_fn(*args)
    (LAMBDA * loss).backward()
    grads = [p.grad.detach().float().clone() for p in params]
    for p in params:
        p.grad = None
    return float(loss.detach()), grads


def agreement(ref, got) -> dict[str, float]:
    (l_ref, g_ref), (l_got, g_got) = ref, got
    out = {"loss_rel_err": abs(l_got - l_ref) / max(abs(l_ref), 1e-30)}
    out["grad_max_err_over_max"] = max(
        float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) for a, b in zip(g_got, g_ref)
    )
    return out


def copy_bandwidth(timer: Timer, device: torch.device, nbytes: int) -> dict[str, float]:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer.time_ms(lambda: dst.copy_(src), [])
    return {"bytes": 2 * nbytes, "ms": ms, "gb_per_s": 2 * nbytes / ms / 1e6}


# ---------------------------------------------------------------------------------------------
# the cases


def make_index(b: int, n: int, k: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """``k`` distinct random positions per row (what select_tokens hands over)."""
    return torch.rand(b, n, generator=gen).argsort(dim=1)[:, :k].sort(dim=1).values.to(device)


def token_kl_case(cfg, c, dtype, device, gen):
    b, n, k = cfg["b"], cfg["n"], cfg["k"]
    s = (torch.randn(b, n, c, generator=gen) * 4).to(device=device, dtype=dtype)
    s.requires_grad_(True)
    t = (torch.randn(b, n, c, generator=gen) * 4).to(device=device, dtype=dtype)
    index = make_index(b, n, k, device, gen)
    weights = (torch.rand(b, generator=gen) * 2).to(device)
    return s, t, index, weights


def bench_token_kl(cfg, timer, device, gen, liger_fn, compile_backend, copy_gbs, dnames, save):
    rows = []
    for dname in dnames:
        dtype = DTYPES[dname]
        # widest first: the targets are at C = 50265, and a run cut short keeps them
        for c in sorted(cfg["widths"], reverse=True):
            s, t, index, weights = token_kl_case(cfg, c, dtype, device, gen)
            b, n, k = cfg["b"], cfg["n"], cfg["k"]
            es = s.element_size()
            floor_bytes = 2 * b * k * c * es + b * n * c * es
            args = (s, t, index, weights)
            impls: dict[str, Callable | str] = {
                "eager": eager_token_kl,
                "compile": torch.compile(
                    eager_token_kl, backend=compile_backend, dynamic=False, fullgraph=True
                ),
                "liger": liger_fn,
                "ours": ours_token_kl,
            }
            case = {"dtype": dname, "B": b, "N": n, "k": k, "C": c, "tau": TAU}
            case["bytes_floor"] = floor_bytes
            case["grad_bytes"] = b * n * c * es
            runs = {n: _fwd_bwd(fn, *args) for n, fn in impls.items() if not isinstance(fn, str)}
            results = measure_many(timer, runs, [s], cfg["rounds"])
            results += [{"impl": n, "error": fn} for n, fn in impls.items() if isinstance(fn, str)]
            # tile width x warps, only where C spans several tiles (each pair is a fresh JIT)
            sweep_runs = {}
            if c == max(cfg["widths"]):
                for blk in cfg["blocks"]:
                    for warps in cfg["warps"]:
                        run = with_kernel_config(_fwd_bwd(ours_token_kl, *args), blk, warps)
                        sweep_runs[f"ours[MAX_BLOCK={blk},warps={warps}]"] = run
                # where the time goes: the forward alone, and a memset of the gradient's size
                sweep_runs["ours_forward_only"] = lambda a=args: ours_token_kl(*a)
                sweep_runs["eager_forward_only"] = lambda a=args: eager_token_kl(*a)
                sweep_runs["zeros_like_student"] = lambda x=s: torch.zeros_like(x)
            sweep = measure_many(timer, sweep_runs, [s], 1) if sweep_runs else []
            for r in results + sweep:
                if "ms" in r and not r["impl"].endswith(("_only", "_student")):
                    r["gb_per_s"] = floor_bytes / r["ms"] / 1e6
                    r["frac_of_copy_bw"] = r["gb_per_s"] / copy_gbs if copy_gbs else None
            try:
                ref = loss_and_grads(eager_token_kl, args, [s])
                case["ours_vs_eager"] = agreement(ref, loss_and_grads(ours_token_kl, args, [s]))
            except Exception as exc:
                case["ours_vs_eager"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            case["results"] = results
            case["block_sweep"] = sweep
            rows.append(case)
            print(_fmt_case(case), flush=True)
            save()
            del s, t, args
    return rows


def bench_fused_linear(cfg, timer, device, gen, dnames, save):
    rows = []
    b, n, k, d, c = cfg["b"], cfg["n"], cfg["k"], cfg["fl_d"], cfg["fl_c"]
    for dname in dnames:
        dtype = DTYPES[dname]
        h = torch.randn(b, n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
        w = (torch.randn(c, d, generator=gen) / math.sqrt(d) * 4).to(device=device, dtype=dtype)
        w.requires_grad_(True)
        bias = (torch.randn(c, generator=gen) * 0.1).to(device=device, dtype=dtype)
        bias.requires_grad_(True)
        t = (torch.randn(b, n, c, generator=gen) * 4).to(device=device, dtype=dtype)
        index = make_index(b, n, k, device, gen)
        weights = (torch.rand(b, generator=gen) * 2).to(device)
        args, params = (h, w, bias, t, index, weights), [h, w, bias]
        case = {"dtype": dname, "B": b, "N": n, "k": k, "d": d, "C": c, "tau": TAU}
        runs = {
            "eager_full_head": _fwd_bwd(eager_linear_full, *args),
            "eager_selected_head": _fwd_bwd(eager_linear_selected, *args),
            "ours": _fwd_bwd(ours_linear, *args),
        }
        case["results"] = measure_many(timer, runs, params, cfg["rounds"])
        try:
            ref = loss_and_grads(eager_linear_full, args, params)
            case["ours_vs_eager"] = agreement(ref, loss_and_grads(ours_linear, args, params))
        except Exception as exc:
            case["ours_vs_eager"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        rows.append(case)
        print(_fmt_case(case), flush=True)
        save()
        del h, w, bias, t, args, params
    return rows


def bench_select(cfg, timer, device, gen):
    rows = []
    for b, n in cfg["select_shapes"]:
        scores = torch.randn(b, n, generator=gen).to(device)
        mask = (torch.rand(b, n, generator=gen) < 0.8).to(device)
        k = max(1, n // 4)

        def sort_ref(scores=scores, mask=mask, k=k):
            ops.select_tokens(scores, mask, k)

        def topk(scores=scores, mask=mask, k=k):
            # unstable on ties (the reference breaks them towards the lower position)
            torch.topk(scores.masked_fill(~mask, float("-inf")), k, dim=1)

        rows.append(
            {
                "B": b, "N": n, "k": k,
                "stable_sort_ms": timer.time_ms(sort_ref, []),
                "topk_ms": timer.time_ms(topk, []),
            }
        )  # fmt: skip
    return rows


def bench_feature(cfg, timer, device, gen):
    rows = []
    b, n, k, d = cfg["b"], cfg["n"], cfg["k"], cfg["feat_d"]
    for dname, dtype in DTYPES.items():
        s = torch.randn(b, n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
        t = torch.randn(b, n, d, generator=gen).to(device=device, dtype=dtype)
        index = make_index(b, n, k, device, gen)
        weights = torch.ones(b, device=device)
        run = _fwd_bwd(ops.feature_loss, s, t, index, weights)
        (r,) = measure_many(timer, {"feature_loss_eager": run}, [s], cfg["rounds"])
        rows.append({"dtype": dname, "B": b, "N": n, "k": k, "D": d, **r})
    return rows


# ---------------------------------------------------------------------------------------------
# report


def _get(results, impl, key="ms"):
    for r in results:
        if r.get("impl") == impl and key in r and r[key] is not None:
            return r[key]
    return None


def _fmt_case(case) -> str:
    parts = [f"{case['dtype']} C={case['C']}"]
    for r in case["results"]:
        if "ms" in r:
            mem = r.get("peak_mb_above_inputs")
            gbs = r.get("gb_per_s")
            parts.append(
                f"{r['impl']}: {r['ms']:.3f} ms"
                + (f" {gbs:.0f} GB/s" if gbs else "")
                + (f" {mem:.0f} MB" if mem is not None else "")
            )
        else:
            parts.append(f"{r['impl']}: {r.get('error', '?')[:60]}")
    return " | ".join(parts)


def check_targets(token_rows, fl_rows, copy_gbs) -> dict[str, Any]:
    """The issue's targets (H100, bf16, C = 50265): each with the measured ratio."""
    out: dict[str, Any] = {}
    case = next((r for r in token_rows if r["dtype"] == "bf16" and r["C"] == 50265), None)
    if case is not None:
        res = case["results"]
        ours = _get(res, "ours")

        def speedup(other, goal):
            o = _get(res, other)
            if ours is None or o is None:
                return {"goal": goal, "measured": None}
            return {"goal": goal, "measured": o / ours, "met": o / ours >= goal}

        out["speedup_vs_eager"] = speedup("eager", 3.0)
        out["speedup_vs_compile"] = speedup("compile", 1.5)
        out["speedup_vs_liger"] = speedup("liger", 1.3)
        gbs = _get(res, "ours", "gb_per_s")
        frac = gbs / copy_gbs if gbs and copy_gbs else None
        out["frac_of_copy_bw"] = {
            "goal": 0.75,
            "measured": frac,
            "met": bool(frac and frac >= 0.75),
        }
        m_ours = _get(res, "ours", "peak_mb_above_inputs")
        m_eager = _get(res, "eager", "peak_mb_above_inputs")
        ratio = m_ours / m_eager if m_ours is not None and m_eager else None
        out["peak_mem_vs_eager"] = {
            "goal": "<= 0.25",
            "measured": ratio,
            "met": bool(ratio is not None and ratio <= 0.25),
        }
        out["peak_mem_floor_mb"] = case["grad_bytes"] / 2**20
    fl = next((r for r in fl_rows if r["dtype"] == "bf16"), None)
    if fl is not None:
        res = fl["results"]
        m_ours = _get(res, "ours", "peak_mb_above_inputs")
        m_eager = _get(res, "eager_full_head", "peak_mb_above_inputs")
        ratio = m_ours / m_eager if m_ours is not None and m_eager else None
        out["fused_linear_peak_mem_vs_eager"] = {
            "goal": "<= 0.1",
            "measured": ratio,
            "met": bool(ratio is not None and ratio <= 0.1),
        }
        t_ours, t_eager = _get(res, "ours"), _get(res, "eager_full_head")
        ratio = t_eager / t_ours if t_ours and t_eager else None
        out["fused_linear_speedup_vs_eager"] = {
            "goal": ">= 1.0",
            "measured": ratio,
            "met": bool(ratio is not None and ratio >= 1.0),
        }
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["token_kl"]
    impls = ["eager", "compile", "liger", "ours"]
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [f"{r['dtype']}\nC={r['C']}" for r in rows]
    width = 0.2
    for i, impl in enumerate(impls):
        ys = [_get(r["results"], impl) or 0.0 for r in rows]
        ax_t.bar([x + (i - 1.5) * width for x in range(len(rows))], ys, width, label=impl)
    ax_t.set_xticks(range(len(rows)), labels, fontsize=8)
    ax_t.set_ylabel("fwd+bwd time (ms, log)")
    ax_t.set_yscale("log")
    ax_t.set_title(f"token_kl, B*N={rows[0]['B'] * rows[0]['N']}, k=25%")
    ax_t.legend(fontsize=8)
    for i, impl in enumerate(impls):
        ys = [_get(r["results"], impl, "gb_per_s") or 0.0 for r in rows]
        ax_b.bar([x + (i - 1.5) * width for x in range(len(rows))], ys, width, label=impl)
    copy = report["copy_bandwidth"]["gb_per_s"]
    ax_b.axhline(copy, color="k", ls="--", lw=1, label=f"copy {copy:.0f} GB/s")
    ax_b.set_xticks(range(len(rows)), labels, fontsize=8)
    ax_b.set_ylabel("achieved GB/s (bytes that must move / time)")
    ax_b.legend(fontsize=8)
    fig.suptitle(f"{report['device']}  torch {report['torch']}  triton {report['triton']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_tables(report: dict[str, Any]) -> str:
    """The README's tables from a results JSON (``--table``)."""
    copy = report["copy_bandwidth"]["gb_per_s"]
    head = (
        f"{report['device']}, torch {report['torch']}, Triton {report['triton']}, Liger-Kernel "
        f"{report['liger_kernel']}, {report['date'][:10]}; copy bandwidth {copy:.0f} GB/s; "
        "fwd+bwd ms (median of 3 interleaved rounds), GB/s = bytes that must move / time, "
        "peak MB above the inputs"
    )
    impls = ["eager", "compile", "liger", "ours"]
    lines = [head, "", "| dtype | C | " + " | ".join(impls) + " | ours vs eager / compile / "
             "Liger | ours GB/s (of copy) | peak MB eager / ours |",
             "|---|---|" + "---|" * (len(impls) + 3)]  # fmt: skip
    for r in report["token_kl"]:
        res = r["results"]
        ms = {i: _get(res, i) for i in impls}
        ours = ms["ours"]
        cells = [f"{ms[i]:.3f}" if ms[i] else "–" for i in impls]
        ratio = " / ".join(f"{ms[i] / ours:.1f}×" if ms[i] and ours else "–" for i in impls[:3])
        gbs = _get(res, "ours", "gb_per_s")
        mem = f"{_get(res, 'eager', 'peak_mb_above_inputs'):.0f} / "
        mem += f"{_get(res, 'ours', 'peak_mb_above_inputs'):.0f}"
        lines.append(
            f"| {r['dtype']} | {r['C']} | " + " | ".join(cells) + f" | {ratio} | "
            f"{gbs:.0f} ({gbs / copy:.0%}) | {mem} |"
        )
    lines += ["", "| fused linear (d = 768, C = 50265) | eager full head | eager selected head | "
              "ours | peak MB: full / selected / ours |", "|---|---|---|---|---|"]  # fmt: skip
    for r in report["fused_linear_token_kl"]:
        res = r["results"]
        names = ["eager_full_head", "eager_selected_head", "ours"]
        cells = [f"{_get(res, n):.2f} ms" for n in names]
        mems = " / ".join(f"{_get(res, n, 'peak_mb_above_inputs'):.0f}" for n in names)
        lines.append(f"| {r['dtype']} | " + " | ".join(cells) + f" | {mems} |")
    lines += ["", "| target (bf16, C = 50265) | goal | measured | met |", "|---|---|---|---|"]
    for name, t in report["targets"].items():
        if isinstance(t, dict):
            m = t["measured"]
            lines.append(f"| {name} | {t['goal']} | {m:.2f} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny shapes on the CPU (interpreter), to check"
    )
    parser.add_argument(
        "--table", type=Path, metavar="JSON", help="print the markdown tables of a results file"
    )
    args = parser.parse_args(argv)
    if args.table is not None:
        print(markdown_tables(json.loads(args.table.read_text())))
        return 0

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        parser.error("no CUDA device: this benchmark needs a GPU (use --dry-run to check it runs)")
    device = torch.device("cuda" if cuda else "cpu")
    cfg = FULL if cuda else DRY
    timer = Timer(cuda)
    gen = torch.Generator().manual_seed(0)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in every implementation

    import triton

    try:
        liger_fn: Callable | str = liger_token_kl_factory()
        import liger_kernel  # noqa: F401

        liger_version = importlib.metadata.version("liger-kernel")
    except Exception as exc:
        liger_fn = f"liger_kernel unavailable: {type(exc).__name__}: {exc}"[:300]
        liger_version = None

    device_name = torch.cuda.get_device_name() if cuda else f"cpu-dry-run-{platform.machine()}"
    report: dict[str, Any] = {
        "device": device_name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "liger_kernel": liger_version,
        "cuda": torch.version.cuda if cuda else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "command": "python benchmarks/kernels.py " + " ".join(argv or sys.argv[1:]),
        "config": {k: v for k, v in cfg.items()},
        "tau": TAU,
        "loss_scale": LAMBDA,
        "bytes_definition": "2*B*k*C*elem (read the selected student and teacher rows once) + "
        "B*N*C*elem (write the student gradient once)",
    }
    report["copy_bandwidth"] = copy_bandwidth(timer, device, cfg["copy_bytes"])
    print(f"copy bandwidth: {report['copy_bandwidth']['gb_per_s']:.0f} GB/s", flush=True)
    copy_gbs = report["copy_bandwidth"]["gb_per_s"]
    compile_backend = "inductor" if cuda else "eager"
    report["compile_backend"] = compile_backend
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"kernels-{_slug(device_name)}"
    json_path = args.out / f"{stem}.json"
    report["complete"] = False
    report["token_kl"], report["fused_linear_token_kl"] = [], []

    def save() -> None:
        # after every case, atomically: a run stopped part-way keeps what it measured
        report["targets"] = check_targets(
            report["token_kl"], report["fused_linear_token_kl"], copy_gbs
        )
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(json_path)

    # bf16 first (the targets), then fp32; each section appends to the report
    for dname in DTYPES:
        report["token_kl"] += bench_token_kl(
            cfg, timer, device, gen, liger_fn, compile_backend, copy_gbs, [dname], save
        )
        report["fused_linear_token_kl"] += bench_fused_linear(
            cfg, timer, device, gen, [dname], save
        )
    report["select_tokens"] = bench_select(cfg, timer, device, gen)
    report["feature_loss"] = bench_feature(cfg, timer, device, gen)
    report["complete"] = True
    save()
    plot(report, args.out / f"{stem}.png")
    print(json.dumps(report["targets"], indent=2))
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
