"""The example finetunes end to end on the fixture data with tiny random-init local models:
``fit`` a few steps, then ``validate`` the last checkpoint and check the task metric."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]

METRICS = {
    "vqa": ["val/acc", "val/acc_yes_no", "val/acc_number", "val/acc_other"],
    "snli_ve": ["val/acc", "val/acc_entailment", "val/acc_neutral", "val/acc_contradiction"],
    "vcr": ["val/q2a", "val/qa2r", "val/q2ar"],
}


def _example(task: str):
    path = ROOT / "examples" / f"{task}_finetune.py"
    spec = importlib.util.spec_from_file_location(f"example_{task}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(task: str, argv: list[str]):
    from mad_distill.tasks.cli import run_cli

    ex = _example(task)
    cls = {"vqa": "VQA", "snli_ve": "SNLIVE", "vcr": "VCR"}[task]
    return run_cli(
        argv,
        model_class=getattr(ex, f"{cls}Module"),
        datamodule_class=getattr(ex, f"{cls}DataModule"),
    )


@pytest.mark.parametrize("student", ["builtin", "vilt"])
@pytest.mark.parametrize("task", ["vqa", "snli_ve", "vcr"])
def test_example_fit_then_validate(task, student, tmp_path, example_config, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    config = example_config(task, student, tmp_path)
    cli = _run(task, ["fit", "--config", str(config)])
    trainer = cli.trainer
    assert trainer.global_step == 3
    logged = trainer.callback_metrics
    assert "mad/feat" in logged and torch.isfinite(logged["mad/feat"])
    assert float(logged["mad/feat"]) > 0  # distillation really ran
    for name in METRICS[task]:
        assert name in logged, (name, sorted(logged))
    # teachers never reach the checkpoint; the projection heads do
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    keys = list(state["state_dict"])
    assert any(k.startswith("mad_projectors.") for k in keys)
    assert not any("teacher" in k for k in keys)
    assert set(state["mad"]["teachers"]) == {"clip", "text"}

    cli = _run(task, ["validate", "--config", str(config), "--ckpt_path", str(ckpt)])
    metrics = cli.trainer.callback_metrics
    for name in METRICS[task]:
        value = float(metrics[name])
        assert math.isnan(value) or 0.0 <= value <= 1.0, (name, value)
    assert 0.0 <= float(metrics[METRICS[task][0]]) <= 1.0


@pytest.mark.parametrize("mode", ["gt_prob", "correct"])
def test_vqa_unknown_answers_get_zero_weight(mode, tmp_path, example_config):
    """With a 2-answer vocabulary most fixture questions have label -1: training still runs, the
    loss stays finite, and those questions get MAD weight 0 (weighting.py's ignore_index)."""
    torch.set_num_threads(1)
    config = example_config(
        "vqa",
        "builtin",
        tmp_path,
        data={"init_args": {"top_answers": 2, "batch_size": 3}},
        model={"init_args": {"mad": {"weight": {"mode": mode, "gamma": 1.0}}}},
        trainer={"max_steps": 2, "val_check_interval": 2},
    )
    cli = _run("vqa", ["fit", "--config", str(config)])
    logged = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 2
    assert torch.isfinite(logged["train/loss"])
    vocab = yaml.safe_load((tmp_path / "answer_vocab.json").read_text())
    assert len(vocab["answers"]) == 2
    assert cli.model.student.num_classes == 2


def test_baseline_without_mad_runs_as_a_script(tmp_path, example_config):
    """``python examples/snli_ve_finetune.py fit --config ...`` in a fresh process, with
    ``mad: null`` (the finetuning baseline: no teachers, no teacher images)."""
    import os
    import subprocess
    import sys

    config = example_config(
        "snli_ve", "builtin", tmp_path, model={"init_args": {"mad": None}}, trainer={"max_steps": 1}
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "snli_ve_finetune.py"), "fit", "--config",
         str(config)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "mad" not in state
    assert not any(k.startswith("mad_projectors.") for k in state["state_dict"])


def test_mad_distill_fit_command(tmp_path, example_config):
    """``mad-distill fit --config ...`` routes to the same CLI (fit is the default subcommand)."""
    from mad_distill.cli import main

    torch.set_num_threads(1)
    config = example_config("vcr", "vilt", tmp_path, trainer={"max_steps": 1})
    assert main(["fit", "--config", str(config)]) == 0
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_low_shot_and_domain_split_manifests(tmp_path, example_config):
    """Low-shot + domain shift from the YAML: the training subset and its manifest."""
    from mad_distill.data.splits import SplitManifest

    torch.set_num_threads(1)
    domain = {"by": "scene", "train": ["urban", "indoor", "sports", "other"],
              "test": ["water", "snow", "nature"]}  # fmt: skip
    config = example_config(
        "snli_ve",
        "builtin",
        tmp_path,
        data={"init_args": {"fraction": 0.5, "seed": 3, "domain": domain,
                            "manifest_dir": str(tmp_path / "splits")}},
        trainer={"max_steps": 1, "val_check_interval": 1},
    )  # fmt: skip
    cli = _run("snli_ve", ["fit", "--config", str(config)])
    dm = cli.datamodule
    train = SplitManifest.read(tmp_path / "splits" / "split_snli_ve_train.json")
    val = SplitManifest.read(tmp_path / "splits" / "split_snli_ve_val.json")
    assert train.method == "low_shot+domain:scene" and train.fraction == 0.5
    assert train.domains == domain["train"] and val.domains == domain["test"]
    full = dm.build_dataset("train")
    doms = full.domains(by="scene")
    n_in = sum(d in domain["train"] for d in doms)
    assert train.n == n_in // 2 and len(dm.train_set[0]) == train.n
    kept = dm.train_set[0].indices
    assert all(doms[i] in domain["train"] for i in kept)
    train.verify(kept)
