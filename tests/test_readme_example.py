"""The README's MADMixin example, executed exactly as written (so it cannot rot)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
PART = ROOT / "docs" / "readme_parts" / "mixin.md"
MARKER = "class VQAStudent(MADMixin"


def _example(path: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    found = [b for b in blocks if MARKER in b]
    assert len(found) == 1, f"expected one example with {MARKER!r} in {path}, found {len(found)}"
    return found[0]


def test_readme_copy_is_identical():
    assert _example(ROOT / "README.md") == _example(PART)


def test_readme_is_assembled_from_its_parts():
    """README.md is built by docs/build_readme.py; an edit to one side only fails here."""
    import runpy

    order = runpy.run_path(str(ROOT / "docs" / "build_readme.py"))["ORDER"]
    parts = ROOT / "docs" / "readme_parts"
    expected = "\n".join((parts / name).read_text().rstrip() + "\n" for name in order)
    assert (ROOT / "README.md").read_text() == expected, "run: python docs/build_readme.py"


def test_readme_example_runs(monkeypatch, tmp_path):
    code = _example(PART)
    user_lines = [
        line
        for line in code.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "import ", "from "))
    ]
    assert len(user_lines) <= 20, f"the example has {len(user_lines)} lines of user code"

    seen: dict = {}
    fit = L.Trainer.fit

    def recording_fit(trainer, model, *args, **kwargs):
        seen["student"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["teachers"] = {
            role: {k: v.clone() for k, v in t.model.state_dict().items()}
            for role, t in model.mad_teachers.items()
        }
        step = model.training_step
        seen["losses"] = []

        def training_step(*a, **kw):
            loss = step(*a, **kw)
            seen["losses"].append(loss.detach())
            return loss

        monkeypatch.setattr(model, "training_step", training_step)
        return fit(trainer, model, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", recording_fit)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(PART), "exec"), namespace)

    model, trainer = namespace["model"], namespace["trainer"]
    assert len(seen["losses"]) == 2 and all(math.isfinite(x.item()) for x in seen["losses"])
    assert math.isfinite(trainer.callback_metrics["mad/feat"].item())
    after = model.state_dict()
    assert set(after) == set(seen["student"])
    changed = [k for k, v in after.items() if not torch.equal(v, seen["student"][k])]
    assert any(k.startswith("model.") for k in changed)
    assert any(k.startswith("mad_projectors.") for k in changed)
    for role, teacher in model.mad_teachers.items():
        for k, v in teacher.model.state_dict().items():
            assert torch.equal(v, seen["teachers"][role][k]), f"teacher {role} changed {k}"
        assert not teacher.training

    path = tmp_path / "example.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert all(k.startswith(("model.", "mad_projectors.")) for k in ckpt["state_dict"])
    teacher_keys = {k for t in model.mad_teachers.values() for k in t.model.state_dict()}
    assert not any(k.endswith(tuple(teacher_keys)) for k in ckpt["state_dict"])
    assert set(ckpt["mad"]["teachers"]) == {"clip"}
