"""Every Table 3 config loads, and runs two training steps in its local mode (digits, batch 2)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import train_tiny

from vgg_flax.train import recipe, trainer

ROOT = Path(__file__).resolve().parents[1]
TABLE3 = {
    "a_256": ("A", 256, None),
    "alrn_256": ("A-LRN", 256, None),
    "b_256": ("B", 256, None),
    "c_256": ("C", 256, None),
    "c_384": ("C", 384, None),
    "c_jitter": ("C", None, (256, 512)),
    "d_256": ("D", 256, None),
    "d_384": ("D", 384, None),
    "d_jitter": ("D", None, (256, 512)),
    "e_256": ("E", 256, None),
    "e_384": ("E", 384, None),
    "e_jitter": ("E", None, (256, 512)),
}

# Training reads TFDS data in subprocesses (not seen in the imports).
pytestmark = pytest.mark.tensorflow


def load(name: str, mode: str | None = None):
    return importlib.import_module(f"experiments.configs.{name}").get_config(mode)


def test_configs_follow_table3_and_the_papers_recipe():
    assert sorted(TABLE3) == sorted(
        p.stem for p in (ROOT / "experiments" / "configs").glob("[a-e]*_*.py")
    )
    for name, (model, scale, scale_range) in TABLE3.items():
        config = load(name)
        assert config.arch == model and config.data.source == "imagenet2012"
        assert config.batch_size == 256 and config.optim.momentum == 0.9
        assert config.optim.weight_decay == 5e-4 and config.dropout == 0.5
        assert config.optim.schedule == "plateau" and config.optim.max_drops == 3
        assert config.num_epochs == 74
        if scale_range:
            assert tuple(config.data.scale_range) == scale_range
            assert config.init_from == f"runs/{name[0]}_384/model"
        else:
            assert config.data.scale == scale
        fine_tune = scale == 384 or scale_range
        assert config.optim.learning_rate == (1e-3 if fine_tune else 1e-2)
        if model in ("B", "C", "D", "E") and scale == 256:
            assert config.init_from == "runs/a_256/model"  # the paper's warm start from A
        header = importlib.import_module(f"experiments.configs.{name}").__doc__
        assert f"experiments/configs/{name}.py" in header and "top-1 error" in header
    assert recipe.EPOCHS == 74 and recipe.LR_MAX_DROPS == 3


# Local mode at full width is one config's check; the others run it with tiny widths, which is
# all their differences (scale, jitter, learning rate) need.
FULL_WIDTH = "a_256"


@pytest.mark.parametrize("name", sorted(TABLE3))
def test_local_mode_runs_two_steps(name, tmp_path):
    config = load(name, "local")
    if name != FULL_WIDTH:
        config.update(train_tiny.TINY)
    summary = trainer.train(config, str(tmp_path))
    assert summary["step"] == 2 and summary["eval"]["examples"] == 2
    assert os.path.isdir(tmp_path / "checkpoints" / "2")
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 2
    shutil.rmtree(tmp_path)  # a full-width checkpoint is 1 GB


def test_entry_point_with_overrides(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config",
            "experiments/configs/digits.py:local",
            "--workdir",
            str(tmp_path),
            "--config.total_steps=1",
            "--config.optim.schedule=constant",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "steps 1/1" in out.stdout and "eval: top-1 accuracy" in out.stdout
    with pytest.raises(ValueError, match="unknown optim.schedule 'cosine'"):
        config = load("digits", "local")
        config.optim.schedule = "cosine"
        trainer.train(config, str(tmp_path / "bad"))
