from __future__ import annotations

import json

import open_clip
import pytest
import torch

from mad_distill.teachers import OpenCLIPTeacher
from mad_distill.vlkd.bench import VLKDBenchConfig, main, markdown, run

WORLD_TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def world_teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("world_clip_cfg")
    (d / "vlkd-test-world-clip.json").write_text(json.dumps(WORLD_TINY_CLIP))
    open_clip.add_model_config(d)
    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms("vlkd-test-world-clip")
    return OpenCLIPTeacher(model, preprocess=pre, name="vlkd-test-world-clip")


@pytest.mark.slow
def test_bench_runs_end_to_end_and_writes_table(world_teacher, tmp_path):
    cfg = VLKDBenchConfig.quick(
        teacher=world_teacher,
        n_text=60,
        n_pairs=48,
        n_eval=16,
        text_steps=4,
        distill_steps=3,
        variants=("full", "no_icti"),
    )
    result = run(cfg, tmp_path)
    rows = result["rows"]
    assert set(rows) == {"teacher_zero_shot", "plm_undistilled", "full", "no_icti"}
    assert "vqa_image" not in rows["plm_undistilled"]  # no image pathway before distillation
    for key in ("full", "no_icti"):
        r = rows[key]
        for m in ("vqa_image", "vqa_text_only"):
            assert 0.0 <= r[m] <= 1.0
        assert r["infill_text"] > 0 and r["infill_qa"] > 0 and r["infill_image"] > 0
    saved = json.loads((tmp_path / "vlkd.json").read_text())
    assert saved["rows"]["full"]["vqa_image"] == rows["full"]["vqa_image"]
    table = (tmp_path / "vlkd.md").read_text()
    assert table == markdown(result) and "VLKD − ICTI" in table
    assert not list(tmp_path.glob("*.tmp"))


def test_bench_config_errors():
    with pytest.raises(ValueError, match=r"variants: unknown \['no_xyz'\]"):
        VLKDBenchConfig(variants=("no_xyz",))
    with pytest.raises(ValueError, match="text_corpus"):
        VLKDBenchConfig(text_corpus="books")
    with pytest.raises(ValueError, match="batch_size"):
        VLKDBenchConfig(batch_size=1)
    with pytest.raises(SystemExit):
        main(["--variants", "bogus"])
