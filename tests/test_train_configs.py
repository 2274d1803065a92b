"""Every Table 3 config loads, and runs two training steps in its local mode (digits, batch 2).

The training entry point's overrides are checked in process, through the `main(argv)` that
`python -m experiments.train` runs; that command in a process of its own is
tests/test_cli_help_experiments.py's (--help) and, through `vgg-flax train`, an installed
wheel's, tests/test_cli_experiments.py's.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import jax
import pytest
import train_tiny

from vgg_flax.models.arch import count_params
from vgg_flax.models.vgg import create_model
from vgg_flax.train import recipe, trainer

TINY = train_tiny.TINY

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


# Local mode at full width is one config's check; two more run it with tiny widths, which is all
# their differences need: LRN, and C's 1x1 convs at the fine-tuning rate (local mode trains at
# one scale, jittered rows too). The other rows differ from these only in values the first test
# checks (B, D and E only in depth: more of A's 3x3 convs), and build their nets.
FULL_WIDTH = "a_256"
RUN_LOCALLY = (FULL_WIDTH, "alrn_256", "c_jitter")


@pytest.mark.parametrize("name", RUN_LOCALLY)
def test_local_mode_runs_two_steps(name, tmp_path):
    config = load(name, "local")
    if name != FULL_WIDTH:
        config.update(train_tiny.TINY)
    summary = trainer.train(config, str(tmp_path))
    assert summary["step"] == 2 and summary["eval"]["examples"] == 2
    assert os.path.isdir(tmp_path / "checkpoints" / "2")
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 2
    shutil.rmtree(tmp_path)  # a full-width checkpoint is 1 GB


@pytest.mark.parametrize("name", sorted(set(TABLE3) - set(RUN_LOCALLY)))
def test_local_mode_of_the_other_rows_builds_their_net(name):
    config = load(name, "local")
    assert config.data.source == "digits" and config.total_steps == 2 and not config.init_from
    model = create_model(config.arch, batch_norm=config.batch_norm, num_classes=10, **TINY)
    image = jax.ShapeDtypeStruct((1, 32, 32, 3), jax.numpy.float32)  # local mode's digits
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
    found = sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))
    assert found == count_params(config.arch, config.batch_norm, 10, **TINY)


# ml_collections loads a config file with importlib's deprecated load_module.
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_entry_point_with_overrides(tmp_path, capsys):
    from experiments import train as entry_point

    code = entry_point.main(
        [
            "--config",
            f"{ROOT / 'experiments' / 'configs' / 'digits.py'}:local",
            "--workdir",
            str(tmp_path),
            "--config.total_steps=1",
            "--config.optim.schedule=constant",
            f"--config.width={TINY['width']}",  # a float and an int beside the nested string
            f"--config.head_width={TINY['head_width']}",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "steps 1/1" in out.out and "eval: top-1 accuracy" in out.out
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["optim"]["schedule"] == "constant" and written["width"] == TINY["width"]
    assert written["head_width"] == TINY["head_width"]
    with pytest.raises(ValueError, match="unknown optim.schedule 'cosine'"):
        config = load("digits", "local")
        config.optim.schedule = "cosine"
        trainer.train(config, str(tmp_path / "bad"))
