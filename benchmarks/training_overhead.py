"""Training overhead of MAD: plain finetuning vs MAD with live teachers vs MAD with the cache.

For each student (the built-in student with the world-sized CLIP teacher; a ViLT-size student,
``transformers.ViltConfig()`` defaults, with a ViT-B/32-size CLIP teacher; all random init, the
cost does not depend on the weights) it measures:

* **step time**: one optimizer step (forward, task loss [+ MAD loss], backward, AdamW step) on
  batches held in memory (no data loading, no Lightning loop: the same for every mode). The three
  modes are interleaved round-robin, ``--repeats`` rounds of ``--steps`` steps after a warm-up,
  and the median per-step time is reported with the spread (min-max of the rounds' medians);
* **teacher forward**: ``mad_teacher_outputs`` of the live module alone (the CLIP towers the
  config needs, no student, no loss), median over the same batches, as a share of the plain step:
  the part of the live overhead that only the cache removes;
* **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` per mode (peak reset before);
  on CPU, a fresh process per mode sets up (student, teacher, cache), resets the kernel's
  peak-RSS mark and trains ``--steps`` steps: the peak RSS during training (``VmHWM``), and that
  peak minus the RSS after set-up (the training's own memory: optimizer states, activations,
  teacher activations or cache rows). RSS counts the whole process (Python, libraries), and
  memory freed by glibc may be kept and reused, so read it as an upper-level comparison.

MAD's overhead targets (issue 7): with the cache <= 15 % over plain, with live teachers <= 40 %.
Writes ``benchmarks/results/training_overhead-<device>.json`` and a PNG plot beside it.

    python benchmarks/training_overhead.py                 # both students, CPU defaults
    python benchmarks/training_overhead.py --students builtin --steps 10 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
MODES = ("plain", "live", "cache")
TEXTS = [
    "is the red cube left of the small blue sphere?",
    "how many cylinders are there?",
    "a man is riding a horse on the beach.",
    "what colour is the large ball behind the cube?",
]
CANDIDATES = ["yes", "no", "red", "blue", "green", "two", "three", "four"]


# ---------------------------------------------------------------------------------------------
# students and teachers
def _world_clip_teacher() -> Any:
    import open_clip

    from mad_distill.teachers import OpenCLIPTeacher

    open_clip.add_model_config(ROOT / "mad_distill" / "teachers" / "assets")
    torch.manual_seed(0)
    return OpenCLIPTeacher(open_clip.create_model("MAD-World-CLIP"), name="MAD-World-CLIP-random")


def _vit_b32_teacher() -> Any:
    import open_clip

    from mad_distill.teachers import OpenCLIPTeacher

    torch.manual_seed(0)
    return OpenCLIPTeacher(open_clip.create_model("ViT-B-32"), name="ViT-B-32-random")


class _ViltSizeStudent(nn.Module):
    """``transformers.ViltModel(ViltConfig())`` (ViLT-B/32 sizes, random init) + a linear head.

    Exposes the last hidden states as :class:`StudentTokens`: text tokens (word-level ids from the
    built-in tokenizer), the image CLS (OTHER) and the 12 x 12 patches (IMAGE) of 384 px images.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from transformers import ViltConfig, ViltModel

        self.config = ViltConfig()
        self.vilt = ViltModel(self.config, add_pooling_layer=True)
        self.head = nn.Linear(self.config.hidden_size, num_classes)
        g = self.config.image_size // self.config.patch_size
        self.image_grid = (g, g)
        self.image_size = self.config.image_size

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_size

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, word_ids: Tensor):
        from mad_distill.types import IMAGE, OTHER, TEXT, StudentTokens

        out = self.vilt(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=images,
            pixel_mask=torch.ones(
                images.shape[0], *images.shape[2:], dtype=torch.long, device=images.device
            ),
        )
        hidden = out.last_hidden_state
        b, n, _ = hidden.shape
        length = input_ids.shape[1]
        p = self.image_grid[0] * self.image_grid[1]
        dev = hidden.device
        kinds = torch.full((b, n), OTHER, dtype=torch.long, device=dev)
        kinds[:, :length] = torch.where(word_ids >= 0, TEXT, OTHER)
        kinds[:, n - p :] = IMAGE
        wids = torch.full((b, n), -1, dtype=torch.long, device=dev)
        wids[:, :length] = word_ids
        mask = torch.ones(b, n, dtype=torch.bool, device=dev)
        mask[:, :length] = attention_mask.bool()
        logits = self.head(out.pooler_output)
        tokens = StudentTokens(hidden, mask, kinds, wids, self.image_grid, logits)
        return logits, tokens


def _module_class():
    import lightning as L

    from mad_distill.mixin import MADMixin

    class Bench(MADMixin, L.LightningModule):
        def __init__(self, student: nn.Module, tok: Any, teacher: Any | None) -> None:
            super().__init__()
            self.student, self.tok = student, tok
            self.use_mad = teacher is not None
            if self.use_mad:
                from mad_distill.config import MADConfig

                self.configure_mad(
                    MADConfig(teachers={"clip": teacher}, select=dict(source="relevance")),
                    student_dim=student.hidden_dim,
                )

        def step(self, batch: dict) -> Tensor:
            dev = batch["images"].device  # the tokenizer returns CPU tensors
            enc = {
                k: v.to(dev) if isinstance(v, Tensor) else v
                for k, v in self.tok(batch["texts"]).items()
            }
            logits, tokens = self._forward(batch["images"], enc)
            loss = F.cross_entropy(logits.float(), batch["labels"])
            if self.use_mad:
                loss = loss + self.mad_loss(batch["mad"], tokens)
            return loss

        def _forward(self, images: Tensor, enc: dict) -> tuple[Tensor, Any]:
            if isinstance(self.student, _ViltSizeStudent):
                return self.student(
                    images, enc["input_ids"], enc["attention_mask"], enc["word_ids"]
                )
            out = self.student(images, **enc)
            return out.logits, out.tokens

    return Bench


def _setup(kind: str, batch_size: int, n_batches: int, seed: int = 0) -> dict[str, Any]:
    """Student factory, teacher and the batches for one student kind."""
    from mad_distill.students import BuiltinVLStudent, WordTokenizer
    from mad_distill.types import MADBatch

    tok = WordTokenizer.build(TEXTS + CANDIDATES, max_length=32)
    if kind == "builtin":
        teacher = _world_clip_teacher()
        image_size, teacher_size = 64, 64

        def student() -> nn.Module:
            torch.manual_seed(seed)
            return BuiltinVLStudent(
                len(tok), num_classes=len(CANDIDATES), image_size=64, patch_size=8,
                dim=128, depth=4, heads=4, max_text_len=32,
            )  # fmt: skip
    elif kind == "vilt":
        teacher = _vit_b32_teacher()
        image_size, teacher_size = 384, 224

        def student() -> nn.Module:
            torch.manual_seed(seed)
            return _ViltSizeStudent(len(CANDIDATES))
    else:
        raise ValueError(f"student must be 'builtin' or 'vilt', got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n_batches):
        texts = [TEXTS[(i * batch_size + j) % len(TEXTS)] for j in range(batch_size)]
        images = torch.rand(batch_size, 3, image_size, image_size, generator=g)
        t_images = F.interpolate(images, size=(teacher_size, teacher_size), mode="bilinear")
        labels = torch.randint(0, len(CANDIDATES), (batch_size,), generator=g)
        keys = [f"bench/{i}/{j}" for j in range(batch_size)]
        mad = MADBatch(t_images, texts, labels=labels, candidates=CANDIDATES, keys=keys)
        batches.append({"images": images, "texts": texts, "labels": labels, "mad": mad})
    return {"tok": tok, "teacher": teacher, "student": student, "batches": batches}


def _build_mode(setup: dict[str, Any], mode: str, cache_dir: Path) -> tuple[nn.Module, Any]:
    Bench = _module_class()
    module = Bench(setup["student"](), setup["tok"], None if mode == "plain" else setup["teacher"])
    if mode == "cache":
        from mad_distill.cache import TeacherCache, build_cache, preprocessing_record

        rec = preprocessing_record(module)
        if not (cache_dir / "index.json").exists():
            build_cache(
                cache_dir, module, [b["mad"] for b in setup["batches"]], dataset="bench",
                split="train", preprocessing=rec, dtype="fp16",
            )  # fmt: skip
        module.use_mad_cache(
            TeacherCache(cache_dir, dataset="bench", split="train", teachers=module,
                         preprocessing=rec)
        )  # fmt: skip
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    return module, opt


def _train_step(module: nn.Module, opt: Any, batch: dict) -> None:
    opt.zero_grad(set_to_none=True)
    loss = module.step(batch)
    loss.backward()
    opt.step()


def _move(batch: dict, device: torch.device) -> dict:
    out = dict(batch)
    for k in ("images", "labels"):
        out[k] = batch[k].to(device)
    out["mad"] = batch["mad"].to(device)
    return out


# ---------------------------------------------------------------------------------------------
# measurements
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_modes(kind: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Interleaved step times of the three modes (medians over rounds)."""
    setup = _setup(kind, args.batch[kind], args.steps)
    tmp = Path(tempfile.mkdtemp(prefix=f"mad-bench-{kind}-"))
    modules = {m: _build_mode(setup, m, tmp / "cache") for m in MODES}
    batches = [_move(b, device) for b in setup["batches"]]
    for module, _ in modules.values():
        module.to(device)
    rounds: dict[str, list[float]] = {m: [] for m in MODES}
    for module, opt in modules.values():  # warm-up (allocator, lazy inits, prompt cache)
        for b in batches[: args.warmup]:
            _train_step(module, opt, b)
    for r in range(args.repeats):
        order = MODES if r % 2 == 0 else MODES[::-1]  # alternate to cancel drifts in load
        for mode in order:
            module, opt = modules[mode]
            times = []
            for b in batches:
                _sync(device)
                t0 = time.perf_counter()
                _train_step(module, opt, b)
                _sync(device)
                times.append(time.perf_counter() - t0)
            rounds[mode].append(statistics.median(times))
    # what the live overhead is made of: the teachers' forward alone (no student, no loss)
    live = modules["live"][0]
    required = live.mad_required_outputs()
    teacher_times = []
    for _ in range(args.repeats):
        for b in batches:
            _sync(device)
            t0 = time.perf_counter()
            live.mad_teacher_outputs(b["mad"], required)
            _sync(device)
            teacher_times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {}
    for mode in MODES:
        med = statistics.median(rounds[mode])
        out[mode] = {
            "step_s_median": med,
            "round_medians_s": rounds[mode],
            "spread_s": [min(rounds[mode]), max(rounds[mode])],
        }
    plain = out["plain"]["step_s_median"]
    for mode in ("live", "cache"):
        out[mode]["overhead_pct"] = 100.0 * (out[mode]["step_s_median"] / plain - 1.0)
    teacher = statistics.median(teacher_times)
    out["live"]["teacher_forward_s_median"] = teacher
    out["live"]["teacher_forward_pct_of_plain"] = 100.0 * teacher / plain
    out["live"]["teacher_outputs"] = sorted(required)
    return out


def profile_modes(kind: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Where a step's host time goes, per mode: ``torch.profiler`` over ``args.steps`` steps
    after warm-up, the ``args.profile`` ops with the most self CPU time. A launch-bound step
    costs what its host side costs, so this, not GPU time, says what to cut."""
    from torch.profiler import ProfilerActivity, profile

    setup = _setup(kind, args.batch[kind], args.steps)
    tmp = Path(tempfile.mkdtemp(prefix=f"mad-prof-{kind}-"))
    batches = [_move(b, device) for b in setup["batches"]]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out: dict[str, Any] = {}
    for mode in MODES:
        module, opt = _build_mode(setup, mode, tmp / "cache")
        module.to(device)
        for b in batches[: max(args.warmup, 1)]:
            _train_step(module, opt, b)
        _sync(device)
        with profile(activities=activities) as prof:
            for b in batches:
                _train_step(module, opt, b)
            _sync(device)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        steps = len(batches)
        out[mode] = {
            "self_cpu_ms_per_step": sum(e.self_cpu_time_total for e in events) / 1e3 / steps,
            "launches_per_step": sum(
                e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel")
            )
            / steps,
            "top": [
                {
                    "op": e.key,
                    "calls_per_step": e.count / steps,
                    "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                }
                for e in events[: args.profile]
            ],
        }
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync_points(kind: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Where one training step makes the host wait for the GPU, per mode: the step runs under
    ``torch.cuda.set_sync_debug_mode("warn")`` and each warning's Python line is recorded.
    A launch-bound step (small models) loses its CPU/GPU overlap at every such point."""
    import warnings

    setup = _setup(kind, args.batch[kind], 1)
    tmp = Path(tempfile.mkdtemp(prefix=f"mad-sync-{kind}-"))
    batch = _move(setup["batches"][0], device)
    out: dict[str, Any] = {}
    for mode in MODES:
        module, opt = _build_mode(setup, mode, tmp / "cache")
        module.to(device)
        _train_step(module, opt, batch)  # warm-up: lazy inits may sync once
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _train_step(module, opt, batch)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        where = [
            f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}"
            for w in caught
            if "synchroniz" in str(w.message)
        ]
        out[mode] = {"count": len(where), "where": sorted(set(where))}
    return out


def memory_one(kind: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Peak memory while training one mode (run in a fresh process on CPU)."""
    setup = _setup(kind, args.batch[kind], args.steps)
    tmp = Path(tempfile.mkdtemp(prefix=f"mad-bench-mem-{kind}-"))
    module, opt = _build_mode(setup, mode, tmp / "cache")  # "cache" builds it first, then reads
    module.to(device)
    batches = [_move(b, device) for b in setup["batches"]]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for b in batches:
            _train_step(module, opt, b)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mb": peak / 2**20, "above_setup_mb": (peak - base) / 2**20}
    # CPU: the kernel's peak RSS, reset after set-up, so it is the peak *during training*
    # (optimizer states, activations, gradients, teacher activations, cache shards)
    base = _rss_mb()
    exact = _reset_peak_rss()
    for b in batches:
        _train_step(module, opt, b)
    peak = _peak_rss_mb()
    return {
        "peak_rss_mb": peak,
        "rss_after_setup_mb": base,
        "above_setup_mb": peak - base,
        "peak_reset": exact,
    }


def memory_modes(kind: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {m: memory_one(kind, m, args, device) for m in MODES}
    out = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--_memory", kind, mode, "--steps", str(args.steps),
               "--threads", str(args.threads), "--batch-builtin", str(args.batch["builtin"]),
               "--batch-vilt", str(args.batch["vilt"])]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------------------------------------
# report
def _versions() -> dict[str, str]:
    import lightning
    import open_clip
    import transformers

    from mad_distill import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
        "mad_distill": __version__,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = list(result["students"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.25
    colors = {"plain": "#888888", "live": "#d62728", "cache": "#1f77b4"}
    for i, mode in enumerate(MODES):
        xs = [j + (i - 1) * width for j in range(len(students))]
        rel, lo, hi = [], [], []
        for s in students:
            t = result["students"][s]["time"]
            plain = t["plain"]["step_s_median"]
            rel.append(100 * t[mode]["step_s_median"] / plain)
            lo.append(100 * t[mode]["spread_s"][0] / plain)
            hi.append(100 * t[mode]["spread_s"][1] / plain)
        err = [[r - a for r, a in zip(rel, lo)], [b - r for r, b in zip(rel, hi)]]
        axes[0].bar(xs, rel, width, yerr=err, label=mode, color=colors[mode], capsize=3)
        if "memory" in result["students"][students[0]]:
            key = "peak_mb" if result["device_type"] == "cuda" else "above_setup_mb"
            mem = [result["students"][s]["memory"][mode][key] for s in students]
            axes[1].bar(xs, mem, width, label=mode, color=colors[mode])
    for y, mode in ((115, "cache"), (140, "live")):
        axes[0].axhline(y, color=colors[mode], linestyle="--", linewidth=1)
    labels = [
        f"{s}\n(plain {result['students'][s]['time']['plain']['step_s_median'] * 1e3:.0f} ms)"
        for s in students
    ]
    mem_title = (
        "peak memory (MiB, max_memory_allocated)"
        if result["device_type"] == "cuda"
        else "training memory (MiB: peak RSS - RSS after set-up)"
    )
    titles = ("step time, % of plain (median; bars: spread of rounds; dashed: targets)", mem_title)
    for ax, title in zip(axes, titles):
        ax.set_xticks(range(len(students)))
        ax.set_xticklabels(labels)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MAD training overhead on {result['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--students", nargs="+", default=["builtin", "vilt"], choices=["builtin", "vilt"]
    )
    p.add_argument("--steps", type=int, default=4, help="steps (batches) per round")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-builtin", type=int, default=16)
    p.add_argument("--batch-vilt", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument(
        "--profile", type=int, default=0, metavar="TOP",
        help="also profile each mode's steps and record the TOP ops by self CPU time",
    )  # fmt: skip
    p.add_argument("--_memory", nargs=2, metavar=("STUDENT", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batch = {"builtin": args.batch_builtin, "vilt": args.batch_vilt}
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if args._memory:
        kind, mode = args._memory
        print(json.dumps(memory_one(kind, mode, args, device)))
        return None
    result: dict[str, Any] = {
        "benchmark": "training_overhead",
        "command": "python benchmarks/training_overhead.py " + " ".join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(device),
        "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": list(os.getloadavg()),
        "versions": _versions(),
        "settings": {
            "steps": args.steps,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "batch": args.batch,
            "cache_dtype": "fp16",
            "select_source": "relevance",
            "weight_mode": "gt_prob",
            "optimizer": "AdamW",
        },  # fmt: skip
        "targets_pct": {"cache": 15.0, "live": 40.0},
        "students": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = args.out / f"training_overhead-{tag}.json"
    for kind in args.students:
        entry: dict[str, Any] = {"time": time_modes(kind, args, device)}
        if device.type == "cuda":
            entry["sync_points"] = sync_points(kind, args, device)
            print(f"{kind} host syncs per step: {json.dumps(entry['sync_points'])}", flush=True)
        if not args.no_memory:
            entry["memory"] = memory_modes(kind, args, device)
        if args.profile:
            entry["profile"] = profile_modes(kind, args, device)
            for mode, prof in entry["profile"].items():
                print(
                    f"{kind} {mode}: {prof['self_cpu_ms_per_step']:.1f} ms host time per step, "
                    f"{prof['launches_per_step']:.0f} kernel launches; top: "
                    + ", ".join(
                        f"{t['op']} {t['self_cpu_ms_per_step']:.2f} ms" for t in prof["top"][:8]
                    ),
                    flush=True,
                )
        result["students"][kind] = entry
        t = entry["time"]
        print(
            f"{kind}: plain {t['plain']['step_s_median'] * 1e3:.1f} ms, "
            f"live {t['live']['step_s_median'] * 1e3:.1f} ms (+{t['live']['overhead_pct']:.1f} %; "
            f"teacher forward alone {t['live']['teacher_forward_s_median'] * 1e3:.1f} ms = "
            f"{t['live']['teacher_forward_pct_of_plain']:.1f} % of plain), "
            f"cache {t['cache']['step_s_median'] * 1e3:.1f} ms "
            f"(+{t['cache']['overhead_pct']:.1f} %)",
            flush=True,
        )
        result["load_average_end"] = list(os.getloadavg())
        path.write_text(json.dumps(result, indent=1) + "\n")  # after each student: a run cut
        # short keeps the students it finished
    if not args.no_memory:
        _plot(result, path.with_suffix(".png"))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
