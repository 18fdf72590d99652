"""The world runner: options, teacher-feature store, determinism and resume with the real runner."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mad_distill.bench import harness
from mad_distill.bench.harness import BenchConfig, RunSpec
from mad_distill.bench.world import (
    TeacherFeatureStore,
    WorldTaskModule,
    _dataset,
    _teachers,
    check_run,
    clear_caches,
    mad_config_for,
    run_world,
    train_options,
    world_tokenizer,
)

TINY = {
    "student": "scratch",
    "dim": 32,
    "depth": 1,
    "heads": 2,
    "epochs": 1,
    "min_steps": 2,
    "max_steps": 2,
    "test_size": 16,
    "batch_size": 8,
}


def _bench(tmp_path, spec, **kw) -> BenchConfig:
    args = dict(
        tasks=["snli_ve"],
        fractions=[0.002],
        seeds=[0],
        methods={"baseline": None, "MAD": {"select": {"ratio": 0.3}}},
        train={**TINY, "teacher": spec, "pool_size": 2000},
        out_dir=str(tmp_path / "out"),
    )
    args.update(kw)
    return BenchConfig(**args)


def _tiny_module(task, spec, teachers, store=None) -> WorldTaskModule:
    """A small distilling student on ``task`` with the given (random-weight) teachers."""
    from mad_distill.data.world.tasks import num_classes

    return WorldTaskModule(
        task,
        len(world_tokenizer()),
        num_classes(task),
        mad=mad_config_for({}, {"teacher": spec}),
        teachers=teachers,
        store=store,
        dim=32,
        depth=1,
        heads=2,
        tokenizer=world_tokenizer(),
    )


def test_train_options_reject_bad_values():
    with pytest.raises(ValueError, match="unknown option.*epoch"):
        train_options({"epoch": 3})
    with pytest.raises(ValueError, match="train.lr"):
        train_options({"lr": 0})
    with pytest.raises(ValueError, match="train.batch_size"):
        train_options({"batch_size": 0})
    assert train_options({})["teacher"] == "world-clip"
    assert train_options({})["student"] == "world-vl"
    with pytest.raises(ValueError, match="train.student"):
        train_options({"student": ""})
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        train_options({"student": "nope.safetensors"})


def test_accelerator_option():
    assert train_options({})["accelerator"] == "cpu"
    assert train_options({"accelerator": "gpu"})["accelerator"] == "cuda"  # Lightning's alias
    assert train_options({"accelerator": "cuda"})["accelerator"] == "cuda"
    for bad in ("tpu", "auto", 0, None):
        with pytest.raises(ValueError, match="train.accelerator"):
            train_options({"accelerator": bad})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_cuda_without_a_gpu_is_an_error_not_a_cpu_run(tmp_path):
    bench = _bench(tmp_path, "world-clip", train={**TINY, "accelerator": "cuda"})
    with pytest.raises(ValueError, match="train.accelerator is 'cuda'"):
        check_run(RunSpec("vqa", "baseline", 0.01, 0), bench)
    with pytest.raises(ValueError, match="train.accelerator is 'cuda'"):
        run_world(RunSpec("vqa", "baseline", 0.01, 0), bench)


def test_the_accelerator_is_part_of_the_fingerprint_and_cpu_keeps_the_old_one(tmp_path):
    from mad_distill.bench.world import resolve_train

    bench = BenchConfig(
        tasks=["vqa"], fractions=[0.01], methods={"baseline": None}, out_dir=str(tmp_path)
    )
    run = RunSpec("vqa", "baseline", 0.01, 0)
    fp = {
        acc: harness.run_fingerprint(run, bench, resolve_train({"accelerator": acc}))
        for acc in ("cpu", "cuda", "gpu")
    }
    assert fp["cpu"] == harness.run_fingerprint(run, bench, resolve_train({}))
    assert fp["cuda"] == fp["gpu"] != fp["cpu"]
    # the default leaves the key out: the fingerprints of runs made before the option existed
    assert "accelerator" not in resolve_train({})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_trains_on_cuda(tmp_path, world_clip_spec):
    """Every world-runner path on the GPU (teacher store, unlabelled rows, augmented views the
    teacher labels live, the test pass), as a CPU run of the same grid does it, and repeatable."""
    mad = {"select": {"ratio": 0.3}, "unlabeled": 0.01, "augment": {"kind": "augmix"}}
    methods = {"baseline": None, "MAD-U-aug": mad}
    cpu = _bench(tmp_path, world_clip_spec, tasks=["vqa"], methods=methods)
    gpu = _bench(
        tmp_path,
        world_clip_spec,
        tasks=["vqa"],
        methods=methods,
        train={**cpu.train, "accelerator": "cuda"},
    )
    for method in methods:
        run = RunSpec("vqa", method, 0.002, 0)
        out = run_world(run, gpu)
        assert out["device"].startswith("cuda:")
        assert all(0 <= v <= 100 for v in out["metrics"].values())
        assert run_world(run, cpu)["device"] == "cpu"
        # the store made on the GPU is not served to a CPU run, nor the reverse
        assert run_world(run, gpu)["metrics"] == out["metrics"]


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from mad_distill.data.world.student_pretrain import pretrain_student

    path = tmp_path_factory.mktemp("student") / "tiny_vl.safetensors"
    pretrain_student(path, steps=2, batch_size=8, dim=32, depth=1, heads=2, log_every=0)
    return path


def test_pretrained_student_fixes_the_architecture(tiny_student):
    opts = train_options({"student": str(tiny_student)})
    assert (opts["dim"], opts["depth"], opts["heads"], opts["patch_size"]) == (32, 1, 2, 8)
    # an explicit conflicting size is an error naming the field, not silently overridden
    with pytest.raises(ValueError, match="train.dim=64 conflicts"):
        train_options({"student": str(tiny_student), "dim": 64})
    assert train_options({"student": str(tiny_student), "depth": 1})["depth"] == 1


def test_finetuning_starts_from_the_pretrained_weights(tmp_path, world_clip_spec, tiny_student):
    from mad_distill.bench.world import pretrained_student

    state, _, tok = pretrained_student(str(tiny_student))
    arch = {"dim": 32, "heads": 2, "patch_size": 8}
    module = WorldTaskModule("vqa", len(tok), 5, depth=1, init_state=state, **arch)
    got = module.student.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not fit"):
        WorldTaskModule("vqa", len(tok), 5, depth=2, init_state=state, **arch)
    with pytest.raises(ValueError, match="(?s)does not fit.*patch_embed"):
        WorldTaskModule("vqa", len(tok), 5, depth=1, init_state=state, dim=32, heads=2)
    train = {k: v for k, v in TINY.items() if k not in ("dim", "depth", "heads")}
    bench = _bench(tmp_path, world_clip_spec, train={**train, "student": str(tiny_student)})
    out = run_world(RunSpec("snli_ve", "baseline", 0.002, 0), bench)
    assert out["student"] == str(tiny_student)
    assert set(out["metrics"]) == {"flat", "textured"}
    # SNLI-VE runs also record the confusion [true][predicted]; its diagonal is the accuracy
    for domain, acc in out["metrics"].items():
        m = np.array(out["confusion"][domain])
        assert m.shape == (3, 3) and m.sum() == TINY["test_size"]
        assert 100 * np.trace(m) / m.sum() == pytest.approx(acc, abs=1e-3)
    # ... and the accuracy per question type, whose item-weighted mean is the accuracy
    from collections import Counter

    from mad_distill.bench.world import _dataset

    test = _dataset("snli_ve", "flat", "test", tuple(range(TINY["test_size"])), 0, "q2a")
    counts = Counter(x.qtype for x in test.instances)
    for domain, acc in out["metrics"].items():
        by_type = out["by_type"][domain]
        assert set(by_type) == set(counts)
        mean = sum(by_type[q] * n for q, n in counts.items()) / sum(counts.values())
        assert mean == pytest.approx(acc, abs=1e-2)


def test_fingerprint_follows_resolved_defaults_and_file_checksums(tmp_path, tiny_student):
    from mad_distill.bench.world import resolve_train

    resolved = resolve_train({"student": str(tiny_student)})
    record = json.loads(tiny_student.with_suffix(".json").read_text())
    assert resolved["student_sha256"] == record["sha256"]
    assert resolved["lr"] == train_options({})["lr"]  # defaults are part of it
    assert "teacher_sha256" in resolve_train({"student": "scratch"})  # packaged world-clip
    # a teacher weights file named in an open_clip spec: its bytes, not its path, count
    weights = tmp_path / "t.safetensors"
    weights.write_bytes(b"one")
    spec = {"student": "scratch", "teacher": f"open_clip:MAD-World-CLIP@{weights}"}
    first = resolve_train(spec)["teacher_sha256"]
    weights.write_bytes(b"two")
    assert resolve_train(spec)["teacher_sha256"] != first
    bench = BenchConfig(
        tasks=["vqa"], fractions=[0.01], methods={"baseline": None}, out_dir=str(tmp_path)
    )
    run = RunSpec("vqa", "baseline", 0.01, 0)
    a = harness.run_fingerprint(run, bench, resolved)
    b = harness.run_fingerprint(run, bench, {**resolved, "student_sha256": "0" * 64})
    assert a != b


def test_unknown_task_and_domain_are_named(tmp_path, world_clip_spec):
    bench = _bench(tmp_path, world_clip_spec, tasks=["gqa"])
    with pytest.raises(ValueError, match="gqa"):
        run_world(RunSpec("gqa", "baseline", 0.002, 0), bench)
    bench = _bench(tmp_path, world_clip_spec, test_domains=["sketch"])
    with pytest.raises(ValueError, match="sketch"):
        run_world(RunSpec("snli_ve", "baseline", 0.002, 0), bench)


@pytest.mark.parametrize("task", ["vqa", "vcr"])
def test_store_serves_what_the_teachers_compute(world_clip_spec, task):
    """The cache must give the mixin exactly what running the teachers on the batch gives."""
    from mad_distill.data.world.datamodule import WorldTaskDataset
    from mad_distill.data.world.tasks import num_classes
    from mad_distill.data.world.zero_shot import group_logits

    teachers = _teachers(world_clip_spec, None)
    store = TeacherFeatureStore(teachers, num_classes(task))
    ds = _dataset(task, "flat", "train", (3, 5, 8, 13), 0, "q2a")
    store.fill(ds)
    # the mixin's own path, on a dataset that carries teacher images (open_clip's transform)
    with_images = WorldTaskDataset(task, "flat", [3, 5, 8, 13], split="train")
    batch = with_images.collate([0, 1, 2, 3])
    module = _tiny_module(task, world_clip_spec, teachers)
    need = module.mad_required_outputs()
    direct = super(WorldTaskModule, module).mad_teacher_outputs(batch.mad, need)
    cached = store.outputs(batch.mad, need, torch.device("cpu"))
    torch.testing.assert_close(cached.image.tokens, direct.image.tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached.image.pooled, direct.image.pooled, atol=1e-4, rtol=1e-4)
    n = direct.clip_text.tokens.shape[1]
    assert cached.clip_text.tokens.shape[1] <= n
    m = cached.clip_text.tokens.shape[1]
    valid = cached.clip_text.mask
    torch.testing.assert_close(valid, direct.clip_text.mask[:, :m].bool())
    assert not direct.clip_text.mask[:, m:].any()
    torch.testing.assert_close(
        cached.clip_text.tokens[valid], direct.clip_text.tokens[:, :m][valid]
    )
    torch.testing.assert_close(
        cached.clip_text.word_ids[valid], direct.clip_text.word_ids[:, :m][valid].long()
    )
    groups = batch.mad.extra["candidate_groups"]
    want = group_logits(direct.zero_shot, groups, num_classes(task))
    finite = torch.isfinite(want)
    torch.testing.assert_close(cached.zero_shot[finite], want[finite], atol=1e-3, rtol=1e-4)
    assert bool(torch.isfinite(cached.zero_shot).all())
    assert (cached.zero_shot[~finite] < want[finite].min() - 100).all()


def test_run_is_deterministic_and_resume_skips_finished_runs(tmp_path, world_clip_spec):
    bench = _bench(tmp_path, world_clip_spec)
    lines: list[str] = []
    first = harness.run_bench(bench, log=lines.append)
    assert [r["key"] for r in first] == [
        "snli_ve/baseline/frac0.002/seed0",
        "snli_ve/MAD/frac0.002/seed0",
    ]
    for r in first:
        assert set(r["metrics"]) == {"flat", "textured"}
        assert all(0.0 <= v <= 100.0 for v in r["metrics"].values())
        assert r["train_size"] == 4
    assert first[1]["mad_config"]["teachers"]["clip"] == world_clip_spec
    # resume: the real runner is not called again, the stored results come back
    calls: list = []

    def spy(run, b):
        calls.append(run.key)
        return run_world(run, b)

    lines.clear()
    again = harness.run_bench(bench, runner=spy, log=lines.append)
    assert calls == [] and all("skipped" in line for line in lines)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in first]
    # same run again from scratch: identical numbers (seeded, deterministic)
    rerun = run_world(RunSpec("snli_ve", "MAD", 0.002, 0), bench)
    assert rerun["metrics"] == first[1]["metrics"]


def test_parallel_workers_give_the_sequential_results(tmp_path, world_clip_spec):
    seq = _bench(tmp_path / "seq", world_clip_spec, out_dir=str(tmp_path / "seq"))
    torch.set_num_threads(1)  # the workers run one thread each
    first = harness.run_bench(seq, log=lambda _: None)
    par = _bench(tmp_path / "par", world_clip_spec, out_dir=str(tmp_path / "par"))
    lines: list[str] = []
    second = harness.run_bench(par, log=lines.append, workers=2)
    assert any("2 worker processes" in line for line in lines)
    assert [r["key"] for r in second] == [r["key"] for r in first]  # grid order kept
    assert [r["metrics"] for r in second] == [r["metrics"] for r in first]
    assert len(list((tmp_path / "par" / "runs").glob("*.json"))) == 2
    with pytest.raises(ValueError, match="workers"):
        harness.run_bench(par, workers=0)


def test_a_runs_teacher_outputs_do_not_depend_on_earlier_runs(tmp_path, world_clip_spec):
    """Runs on other items (another seed, a nested fraction) get their own feature store, so a
    run's teacher outputs are those of a fresh process whatever ran before it; runs on the same
    items (other methods) share one."""
    from mad_distill.bench import world

    bench = _bench(tmp_path, world_clip_spec, fractions=[0.002, 0.004], seeds=[0, 1])
    # one thread, as in the bench's workers: with several, a busy machine may change the
    # kernels' split of the work, and with it the last bits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_caches()
    world.run_world(RunSpec("snli_ve", "MAD", 0.004, 1), bench)
    world.run_world(RunSpec("snli_ve", "MAD", 0.002, 0), bench)
    after_others = next(reversed(world._STORES.values()))
    world.run_world(RunSpec("snli_ve", "MAD", 0.002, 0), bench)
    assert next(reversed(world._STORES.values())) is after_others  # same items: reused
    assert len(world._STORES) == 2
    clear_caches()
    world.run_world(RunSpec("snli_ve", "MAD", 0.002, 0), bench)
    fresh = next(reversed(world._STORES.values()))
    assert set(after_others._items) == set(fresh._items)  # nothing from the earlier run
    torch.set_num_threads(threads)
    for key, item in fresh._items.items():
        for name, value in item.items():
            assert torch.equal(after_others._items[key][name], value), (key, name)


# ----------------------------------------------------------------------------- unlabelled inputs
def test_method_options_are_checked_and_kept_out_of_the_mad_config():
    from mad_distill.bench.world import method_options

    assert method_options(None) == {
        "unlabeled": 0.0,
        "class_groups": {},
        "augment": None,
        "distill": True,
        "pseudo_labels": 0.0,
        "tap_layer": None,
        "train": {},
        "per_task": {},
    }
    assert method_options({"unlabeled": 0.2, "select": {"ratio": 0.3}})["unlabeled"] == 0.2
    for bad in (-1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="pseudo_labels must be"):
            method_options({"unlabeled": 0.2, "pseudo_labels": bad})
    with pytest.raises(ValueError, match="pseudo_labels needs unlabeled inputs"):
        method_options({"pseudo_labels": 1.0})
    with pytest.raises(ValueError, match=r"takes no \['unlabeled', 'pseudo_labels'\]"):
        method_options({"distill": False, "unlabeled": 0.2, "pseudo_labels": 1.0})
    for bad in (-0.1, 1.5, True, "0.2"):
        with pytest.raises(ValueError, match="unlabeled"):
            method_options({"unlabeled": bad})
    cfg = mad_config_for({"unlabeled": 0.2, "select": {"ratio": 0.3}}, {"teacher": "world-clip"})
    assert "unlabeled" not in cfg.to_dict(serializable=True)
    with pytest.raises(ValueError, match=r"unlabled.*also takes \('unlabeled', 'class_groups'"):
        mad_config_for({"unlabled": 0.2}, {"teacher": "world-clip"})
    # a baseline with the runner's options: no teacher, so no MAD field or distillation input
    plain = method_options({"distill": False, "augment": {"kind": "augmix", "labeled": True}})
    assert plain["augment"] == {"kind": "augmix", "labeled": True, "unlabeled": True}
    with pytest.raises(ValueError, match=r"distill: false \(no teacher\) takes no \['select'\]"):
        method_options({"distill": False, "select": {"ratio": 0.3}})
    with pytest.raises(ValueError, match=r"takes no \['unlabeled'\]"):
        method_options({"distill": False, "unlabeled": 0.2})
    with pytest.raises(ValueError, match="distill must be true or false"):
        method_options({"distill": "no"})
    with pytest.raises(ValueError, match="augment.kind: unknown augmentation"):
        method_options({"unlabeled": 0.2, "augment": {"kind": "cutout"}})
    with pytest.raises(ValueError, match="no unlabelled inputs"):
        method_options({"augment": {"kind": "augmix"}})


def test_class_groups_apply_to_their_task_only():
    from mad_distill.bench.world import method_options, resolve_method

    method = {"class_groups": {"snli_ve": [0, 0, 1]}, "select": {"ratio": 0.3}}
    opts = {"teacher": "world-clip"}
    assert mad_config_for(method, opts, "snli_ve").class_groups == (0, 0, 1)
    assert mad_config_for(method, opts, "vqa").class_groups is None
    with pytest.raises(ValueError, match="class_groups: task: unknown world task 'snli'"):
        method_options({"class_groups": {"snli": [0, 0, 1]}})
    with pytest.raises(TypeError, match="class_groups must map bench tasks"):
        method_options({"class_groups": [0, 0, 1]})
    with pytest.raises(ValueError, match="class_groups must use every group id"):
        mad_config_for({"class_groups": {"snli_ve": [0, 2, 2]}}, opts, "snli_ve")
    # fingerprints: another task's groups do not rerun a task; its own do
    bench = BenchConfig(
        tasks=["vqa", "snli_ve"],
        fractions=[0.01],
        methods={"MAD": {"select": {"ratio": 0.3}}},
        out_dir="unused",
    )
    grouped = dataclasses.replace(bench, methods={"MAD": method})
    for task, same in (("vqa", True), ("snli_ve", False)):
        run = RunSpec(task, "MAD", 0.01, 0)
        a = harness.run_fingerprint(run, bench, None, resolve_method)
        b = harness.run_fingerprint(run, grouped, None, resolve_method)
        assert (a == b) is same


def test_per_task_overrides_merge_into_their_task_only():
    from mad_distill.bench.world import method_options, resolve_method

    method = {
        "select": {"ratio": 0.3, "source": "relevance"},
        "feat": {"weight": 1.0},
        "class_groups": {"snli_ve": [0, 0, 1]},
        "per_task": {"vqa": {"feat": {"weight": 0.0}, "tap_layer": 0}, "vcr": {"unlabeled": 0.2}},
    }
    assert resolve_method(method, "vqa") == {
        "select": {"ratio": 0.3, "source": "relevance"},
        "feat": {"weight": 0.0},
        "tap_layer": 0,
    }
    assert resolve_method(method, "vcr")["unlabeled"] == 0.2
    snli = resolve_method(method, "snli_ve")
    assert snli == {
        **{k: method[k] for k in ("select", "feat")},
        "class_groups": {"snli_ve": [0, 0, 1]},
    }
    opts = {"teacher": "world-clip"}
    assert mad_config_for(resolve_method(method, "vqa"), opts, "vqa").feat.weight == 0.0
    assert mad_config_for(resolve_method(method, "vcr"), opts, "vcr").feat.weight == 1.0
    # fingerprints: a task without overrides keeps the plain method's; one with them does not
    plain = {k: v for k, v in method.items() if k != "per_task"}
    bench = BenchConfig(tasks=["vqa", "vcr"], fractions=[0.01], methods={"M": plain}, out_dir="x")
    over = dataclasses.replace(bench, methods={"M": method})
    for task, same in (("snli_ve", True), ("vqa", False), ("vcr", False)):
        run = RunSpec(task, "M", 0.01, 0)
        a = harness.run_fingerprint(run, bench, None, resolve_method)
        b = harness.run_fingerprint(run, over, None, resolve_method)
        assert (a == b) is same
    with pytest.raises(ValueError, match="per_task: task: unknown world task 'VQA'"):
        method_options({"per_task": {"VQA": {}}})
    with pytest.raises(TypeError, match="per_task must map bench tasks"):
        method_options({"per_task": [{"feat": {"weight": 0.0}}]})
    with pytest.raises(TypeError, match="per_task.vqa must be a mapping"):
        method_options({"per_task": {"vqa": 0.0}})
    with pytest.raises(ValueError, match="per_task.vqa cannot hold another per_task"):
        method_options({"per_task": {"vqa": {"per_task": {}}}})
    for bad in (1.5, True, "0"):
        with pytest.raises(ValueError, match="tap_layer must be a layer index"):
            method_options({"tap_layer": bad})


def test_a_runs_per_task_settings_reach_its_student(tmp_path, world_clip_spec, monkeypatch):
    """The resolved method drives the run: its tap layer reaches the student, its MAD fields
    the config, and a bad override is named when the run starts."""
    from mad_distill.bench import world

    seen = {}
    real = world.WorldTaskModule

    def spy(*args, **kw):
        module = real(*args, **kw)
        seen["tap"], seen["feat"] = module.student.tap_layer, module.mad_config.feat.weight
        return module

    monkeypatch.setattr(world, "WorldTaskModule", spy)
    train = {**TINY, "depth": 2, "teacher": world_clip_spec, "pool_size": 2000}
    method = {
        "select": {"ratio": 0.3},
        "per_task": {"snli_ve": {"tap_layer": 0, "feat": {"weight": 0.5}}},
    }
    bench = _bench(tmp_path, world_clip_spec, methods={"M": method}, train=train)
    run_world(RunSpec("snli_ve", "M", 0.002, 0), bench)
    assert seen == {"tap": 0, "feat": 0.5}
    run_world(RunSpec("vqa", "M", 0.002, 0), dataclasses.replace(bench, tasks=["vqa"]))
    assert seen == {"tap": 1, "feat": 1.0}  # train.tap_layer (-1: the last) and the default
    bad = dataclasses.replace(bench, methods={"M": {"per_task": {"snli_ve": {"tap_layer": 5}}}})
    with pytest.raises(ValueError, match=r"tap_layer must be in \[-2, 1\], got 5"):
        run_world(RunSpec("snli_ve", "M", 0.002, 0), bad)


def test_a_methods_train_options_override_the_benchs(tmp_path, world_clip_spec):
    """``train:`` in a method changes that method's runs only (steps here), is checked, and a
    weights file it names enters the fingerprint by its content."""
    from mad_distill.bench.world import method_options, resolve_method

    with pytest.raises(TypeError, match="train \\(a method's\\) must map"):
        method_options({"train": 2500})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['steps'\]"):
        method_options({"train": {"steps": 2500}})
    methods = {
        "baseline": None,
        "long": {"distill": False, "train": {"min_steps": 3, "max_steps": 3}},
    }
    bench = _bench(tmp_path, world_clip_spec, methods=methods)
    assert run_world(RunSpec("snli_ve", "baseline", 0.002, 0), bench)["steps"] == 2
    assert run_world(RunSpec("snli_ve", "long", 0.002, 0), bench)["steps"] == 3
    # per task too, and a bad value is named with its method
    per = {"per_task": {"snli_ve": {"train": {"max_steps": -1}}}}
    bad = dataclasses.replace(bench, methods={"P": per})
    with pytest.raises(ValueError, match=r"method 'P' train: train.max_steps must be an int >= 0"):
        run_world(RunSpec("snli_ve", "P", 0.002, 0), bad)
    # a teacher file named by a method: its bytes, not its path, are fingerprinted
    weights = tmp_path / "t.safetensors"
    weights.write_bytes(b"one")
    method = {"train": {"teacher": f"open_clip:MAD-World-CLIP@{weights}"}}
    first = resolve_method(method, "vqa")["train"]["teacher_sha256"]
    weights.write_bytes(b"two")
    assert resolve_method(method, "vqa")["train"]["teacher_sha256"] != first
    assert "teacher_sha256" not in method["train"]  # the config itself is not changed
    assert resolve_method({"train": {"student": "missing.safetensors"}}, "vqa") == {
        "train": {"student": "missing.safetensors"}  # unresolvable: the run reports it
    }
    assert resolve_method({"unlabeled": 0.2}, "vqa") == {"unlabeled": 0.2}  # no train: as it was


@pytest.mark.parametrize("task", ["vqa", "vcr"])
def test_unlabeled_view_never_reads_the_ground_truth(world_clip_spec, task):
    """Unlabelled items are labelled by the teacher's zero-shot prediction, their distilled
    (VCR) text follows that choice, and scrambling the true labels changes nothing."""
    from mad_distill.bench.world import UNLABELED_SUFFIX, unlabeled_view
    from mad_distill.data.world.tasks import num_classes

    teachers = _teachers(world_clip_spec, None)
    store = TeacherFeatureStore(teachers, num_classes(task))
    ds = _dataset(task, "flat", "train", tuple(range(20, 36)), 0, "q2a")
    store.fill(ds, unlabeled=True)
    module = _tiny_module(task, world_clip_spec, teachers, store)
    batch = ds.collate(list(range(16)))
    view = unlabeled_view(batch, module)
    keys = [k + UNLABELED_SUFFIX for k in batch.mad.keys]
    zero_shot = torch.stack([store._items[k]["zero_shot"] for k in keys])
    assert torch.equal(view.labels, zero_shot.argmax(-1))
    assert torch.equal(view.mad.labels, view.labels)
    assert view.mad.keys == keys and view.answer_scores is None
    if task == "vcr":
        want = [f"{t} {c[y]}" for t, c, y in zip(batch.texts, batch.choices, view.labels.tolist())]
        assert view.mad.texts == want
        # the stored teacher text is the text of the teacher's choice too
        direct = teachers["clip"].encode_text(want[:1])
        n = int(store._items[keys[0]]["clip_text/mask"].sum())
        torch.testing.assert_close(
            store._items[keys[0]]["clip_text/tokens"][:n],
            direct.tokens[0, :n],
            atol=1e-4,
            rtol=1e-4,
        )
        assert (view.labels != batch.labels).any()  # a random teacher is often wrong
    scrambled = dataclasses.replace(
        batch,
        labels=(batch.labels + 1) % num_classes(task),
        mad=dataclasses.replace(batch.mad, texts=["?"] * 16, labels=batch.labels.flip(0)),
    )
    again = unlabeled_view(scrambled, module)
    assert torch.equal(again.labels, view.labels)
    if task == "vcr":
        assert again.mad.texts == view.mad.texts


def test_pseudo_labels_add_the_task_loss_on_the_teachers_answers(world_clip_spec):
    """``pseudo_labels: w`` adds ``w`` x the task loss of the unlabelled rows against the teacher's
    zero-shot answers (VQA: cross-entropy, the soft scores are never read)."""
    import torch.nn.functional as F

    from mad_distill.bench.world import _concat, unlabeled_view
    from mad_distill.data.world.tasks import num_classes

    teachers = _teachers(world_clip_spec, None)
    store = TeacherFeatureStore(teachers, num_classes("vqa"))
    ds = _dataset("vqa", "flat", "train", tuple(range(40)), 0, "q2a")
    store.fill(ds)
    store.fill(ds, unlabeled=True)
    module = _tiny_module("vqa", world_clip_spec, teachers, store).eval()  # no dropout
    module.log = lambda *args, **kwargs: None  # no trainer attached
    batch = {"labeled": ds.collate(list(range(8))), "unlabeled": ds.collate(list(range(20, 32)))}
    plain = module.training_step(batch, 0)
    module.pseudo_labels = 2.5
    with_pl = module.training_step(batch, 0)
    view = unlabeled_view(batch["unlabeled"], module)
    logits = module(_concat(batch["labeled"], view)).logits[8:]
    want = F.cross_entropy(logits.float(), view.labels)
    torch.testing.assert_close(with_pl - plain, 2.5 * want)
    # the ground truth of the unlabelled rows is not read
    scrambled = dataclasses.replace(
        batch["unlabeled"],
        labels=batch["unlabeled"].labels.flip(0),
        answer_scores=batch["unlabeled"].answer_scores.flip(0),
    )
    again = module.training_step({**batch, "unlabeled": scrambled}, 0)
    torch.testing.assert_close(again, with_pl)


def test_distilling_on_unlabeled_inputs_runs_and_changes_the_result(tmp_path, world_clip_spec):
    mad = {"select": {"ratio": 0.3}, "weight": {"mode": "gain"}}
    bench = _bench(
        tmp_path,
        world_clip_spec,
        tasks=["vcr"],
        methods={"MAD": mad, "MAD-U": {**mad, "unlabeled": 0.01}},
    )
    plain = run_world(RunSpec("vcr", "MAD", 0.002, 0), bench)
    with_u = run_world(RunSpec("vcr", "MAD-U", 0.002, 0), bench)
    assert plain["unlabeled_size"] == 0 and with_u["unlabeled_size"] == 20
    assert with_u["train_size"] == plain["train_size"] == 4
    assert with_u["metrics"] != plain["metrics"]
    assert with_u == {
        **run_world(RunSpec("vcr", "MAD-U", 0.002, 0), bench),
        "timing": with_u["timing"],
    }


# ----------------------------------------------------------------------------- augmented views
@pytest.mark.parametrize(("task", "unlabeled"), [("vqa", False), ("vcr", True)])
def test_views_get_the_teachers_outputs_on_their_own_pixels(world_clip_spec, task, unlabeled):
    """An augmented view is served the teachers' outputs on the augmented pixels (computed as
    ``fill`` computes a chunk: a view of unchanged pixels gets the stored items bit for bit),
    for one step only."""
    from mad_distill.bench.world import UNLABELED_SUFFIX, VIEW_SUFFIX
    from mad_distill.data.augment import augment_images, create_augmentation
    from mad_distill.data.world.tasks import num_classes
    from mad_distill.data.world.zero_shot import images_to_tensor

    teachers = _teachers(world_clip_spec, None)
    store = TeacherFeatureStore(teachers, num_classes(task))
    ds = _dataset(task, "flat", "train", tuple(range(40, 52)), 0, "q2a")
    store.fill(ds, unlabeled=unlabeled)
    batch = ds.collate(list(range(12)))
    suffix = UNLABELED_SUFFIX if unlabeled else ""

    def view(images):
        keys = [k + VIEW_SUFFIX for k in batch.mad.keys]
        return dataclasses.replace(
            batch, images=images, mad=dataclasses.replace(batch.mad, keys=keys)
        )

    same = view(batch.images)
    store.set_views([(same, unlabeled)])
    for key in batch.mad.keys:
        stored, served = store._items[key + suffix], store._views[key + VIEW_SUFFIX + suffix]
        assert stored.keys() == served.keys()
        for name in stored:
            assert torch.equal(stored[name], served[name]), name

    torch.manual_seed(0)
    pixels = augment_images(batch.images, create_augmentation("augmix"))
    aug = view(pixels.float() / 255)
    store.set_views([(aug, unlabeled)])
    keys = [k + suffix for k in aug.mad.keys]
    need = frozenset({"image", "zero_shot", "clip_text"})
    out = store.outputs(dataclasses.replace(aug.mad, keys=keys), need, torch.device("cpu"))
    clip = teachers["clip"]
    pp = clip.model.visual.preprocess_cfg
    direct = clip.encode_image(
        images_to_tensor(pixels.permute(0, 2, 3, 1).numpy(), pp["mean"], pp["std"])
    )
    torch.testing.assert_close(out.image.pooled, direct.pooled.float())
    assert not torch.allclose(
        out.image.pooled,
        store.outputs(
            dataclasses.replace(batch.mad, keys=[k + suffix for k in batch.mad.keys]),
            need,
            torch.device("cpu"),
        ).image.pooled,
    )
    store.set_views([])  # the next step: the old views are gone
    with pytest.raises(KeyError, match="not stored"):
        store.outputs(dataclasses.replace(aug.mad, keys=keys), need, torch.device("cpu"))


def test_training_on_augmented_views(tmp_path, world_clip_spec, monkeypatch):
    """Augmented labelled rows (a baseline) and augmented unlabelled rows (MAD-U) train,
    change the result, and repeat it exactly; when distilling, every step's views reach the
    teachers."""
    from mad_distill.bench import world

    mad = {"select": {"ratio": 0.3}, "unlabeled": 0.01}
    aug = {"kind": "augmix"}
    bench = _bench(
        tmp_path,
        world_clip_spec,
        tasks=["vcr"],
        methods={
            "baseline": None,
            "baseline-aug": {"distill": False, "augment": {**aug, "labeled": True}},
            "MAD-U": mad,
            "MAD-U-aug": {**mad, "augment": aug},
        },
    )
    served: list[list[str]] = []
    set_views = world.TeacherFeatureStore.set_views

    def spy(self, batches):
        served.append([k for b, _ in batches for k in b.mad.keys])
        return set_views(self, batches)

    monkeypatch.setattr(world.TeacherFeatureStore, "set_views", spy)
    # the trained weights (16 test items after 2 steps rarely tell methods apart)
    trained: list[torch.Tensor] = []

    def on_fit_end(self):
        trained.append(torch.cat([p.detach().flatten() for p in self.student.parameters()]))

    monkeypatch.setattr(world.WorldTaskModule, "on_fit_end", on_fit_end, raising=False)
    out = {m: run_world(RunSpec("vcr", m, 0.002, 0), bench) for m in bench.methods}
    weights = dict(zip(bench.methods, trained))
    assert not torch.equal(weights["baseline-aug"], weights["baseline"])
    assert out["baseline-aug"]["teacher"] is None and out["baseline-aug"]["mad_config"] is None
    assert not torch.equal(weights["MAD-U-aug"], weights["MAD-U"])
    # two steps of MAD-U-aug: each sets the views of its unlabelled rows (the baseline: none)
    assert len(served) == 2
    assert all(len(keys) == 8 and all(k.endswith("#view") for k in keys) for keys in served)
    again = run_world(RunSpec("vcr", "MAD-U-aug", 0.002, 0), bench)
    assert again["metrics"] == out["MAD-U-aug"]["metrics"]
    assert torch.equal(trained[-1], weights["MAD-U-aug"])


@pytest.mark.parametrize("task", ["vqa", "snli_ve"])
def test_distilling_runs_record_the_student_against_its_teacher(tmp_path, world_clip_spec, task):
    from mad_distill.data.world.zero_shot import zero_shot_accuracy

    method = {"select": {"ratio": 0.3}}
    if task == "snli_ve":
        method["class_groups"] = {"snli_ve": [0, 0, 1]}
    else:  # distilling on unlabelled items: the first test_size of them are compared too
        method["unlabeled"] = 0.01
    bench = _bench(tmp_path, world_clip_spec, tasks=[task], methods={"MAD": method})
    out = run_world(RunSpec(task, "MAD", 0.002, 0), bench)
    extra = {"distilled"} if task == "vqa" else set()
    assert set(out["vs_teacher"]) == set(out["metrics"]) | extra
    if task == "vqa":
        pool = out["vs_teacher"]["distilled"]
        assert pool["student"] == pytest.approx(
            pool["teacher"] - pool["teacher_only"] + pool["student_only"], abs=1e-2
        )
    teacher = _teachers(world_clip_spec, None)["clip"]
    for domain, acc in out["metrics"].items():
        got = out["vs_teacher"][domain]
        # the teacher's column is its zero-shot accuracy on the same test items, computed apart
        zs = zero_shot_accuracy(teacher.model, teacher.tokenizer, task, domain, n=TINY["test_size"])
        want = zs["holds" if task == "snli_ve" else "accuracy"]
        assert got["teacher"] == pytest.approx(want, abs=1e-2)  # JSON keeps 3 decimals
        if task == "vqa":  # no class groups: the student's column is its accuracy
            assert got["student"] == pytest.approx(acc, abs=1e-2)
        for row in [got, *got["by_type"].values()]:
            gap = row["teacher"] - row["teacher_only"] + row["student_only"]
            assert row["student"] == pytest.approx(gap, abs=1e-2)
            assert 0 <= row["agreement"] <= 100
    # baselines have no teacher to compare with
    base = run_world(RunSpec(task, "baseline", 0.002, 0), _bench(tmp_path, world_clip_spec))
    assert "vs_teacher" not in base


# ----------------------------------------------------------------------------- shipped grids
@pytest.mark.parametrize(
    "config",
    sorted((Path(__file__).parents[2] / "benchmarks").glob("*.yaml")),
    ids=lambda p: p.stem,
)
def test_shipped_grids_pass_the_run_check(config):
    # every grid in benchmarks/ is one a user can rerun: each of its runs passes check_run
    bench = BenchConfig.from_yaml(config)
    runs = harness.expand_grid(bench)
    assert runs
    for run in runs:
        check_run(run, bench)
    assert bench.out_dir.startswith("benchmarks/results/")


def test_committed_runs_keep_their_fingerprints():
    """Every run result committed under benchmarks/results/ is recognised as finished by its
    grid (the harness skips it): a changed default or option would silently rerun (or, worse,
    mix) them. Grids still running may lack runs."""
    repo = Path(__file__).parents[2]
    from mad_distill.bench.world import resolve_method, resolve_train

    checked = 0
    for config in sorted((repo / "benchmarks").glob("*.yaml")):
        bench = BenchConfig.from_yaml(config)
        resolved = resolve_train(bench.train)
        for run in harness.expand_grid(bench):
            path = harness._run_path(repo / bench.out_dir, run)
            if path.is_file():
                fp = harness.run_fingerprint(run, bench, resolved, resolve_method)
                assert json.loads(path.read_text())["fingerprint"] == fp, (config.name, run.key)
                checked += 1
    assert checked >= 491


def test_run_settings_say_what_a_run_trains_with(tmp_path):
    from mad_distill.bench.world import run_settings

    mad = {"select": {"ratio": 0.3}, "tap_layer": 0}
    methods = {"baseline": None, "plain": {"distill": False}, "MAD": mad}
    a = _bench(tmp_path, "world-clip", methods=methods)
    b = _bench(
        tmp_path,
        "open_clip:ViT-B-32@openai",
        methods={**methods, "MAD": {**mad, "tap_layer": None}},
    )
    b.train["tap_layer"] = 0
    run = RunSpec("vqa", "baseline", 0.01, 0)
    # a baseline: the teacher does not act, and a null method is {distill: false}
    assert run_settings(run, a) == run_settings(
        run, _bench(tmp_path, "open_clip:RN50@openai", methods=methods)
    )
    assert run_settings(run, a) == run_settings(RunSpec("vqa", "plain", 0.01, 0), a)
    assert "teacher" not in run_settings(run, a)["train"]
    # a method's tap layer is the bench's train.tap_layer spelled otherwise
    mad_a, mad_b = (run_settings(RunSpec("vqa", "MAD", 0.01, 0), g) for g in (a, b))
    assert mad_a["train"]["tap_layer"] == mad_b["train"]["tap_layer"] == 0
    assert mad_a["train"]["teacher"] != mad_b["train"]["teacher"] and mad_a != mad_b
    # neither the seed nor the method's name, but the fraction and the steps
    assert run_settings(RunSpec("vqa", "MAD", 0.01, 5), a) == mad_a
    assert run_settings(RunSpec("vqa", "MAD", 0.05, 0), a) != mad_a
    a.train["min_steps"] = 99
    assert run_settings(run, a) != run_settings(
        run, _bench(tmp_path, "world-clip", methods=methods)
    )


def test_check_run_names_the_bad_field(tmp_path):
    bench = _bench(tmp_path, "world-clip", methods={"baseline": None, "mad": {"kl": {"tau": -1.0}}})
    with pytest.raises(ValueError, match="tau"):
        check_run(RunSpec("vqa", "mad", 0.01, 0), bench)
    bench = _bench(tmp_path, "world-clip", methods={"baseline": None, "mad": {"train": {"lr": -1}}})
    with pytest.raises(ValueError, match=r"method 'mad' train: train.lr"):
        check_run(RunSpec("vqa", "mad", 0.01, 0), bench)
    check_run(RunSpec("vqa", "baseline", 0.01, 0), bench)
