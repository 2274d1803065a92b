"""A trained model carries what evaluating it needs: the documented command reproduces its score.

A narrow VGG-A trains briefly on the digits (32x32 crops, "torchvision" normalisation, no flips);
README.md's `.venv/bin/python -m experiments.evaluate --checkpoint runs/demo/model --dataset
digits`, as written, with the run as runs/demo, must count exactly the errors the training run's
own evaluation reported in summary.json, on the same 360 test digits. The run's training
checkpoint (checkpoints/<step>) evaluates the same.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_tiny
from test_export import random_variables

import vgg_flax
from experiments import evaluate as evaluate_cli
from vgg_flax import preprocessing
from vgg_flax.evaluate import protocols
from vgg_flax.models.layers import adaptive_avg_pool
from vgg_flax.weights.loading import read_usage

ROOT = Path(__file__).resolve().parent.parent
TEST_DIGITS = 360
# README.md's evaluation of the demo's model (tests/test_readme.py leaves it to this file).
DOCUMENTED = (
    ".venv/bin/python -m experiments.evaluate --checkpoint runs/demo/model --dataset digits"
)


@pytest.fixture
def run(digits_run) -> tuple[Path, dict]:
    """The shared short digits run (tests/conftest.py)."""
    return digits_run


def errors_from_training(summary: dict) -> int:
    evaluation = summary["eval"]
    assert evaluation["examples"] == TEST_DIGITS
    return round((1 - evaluation["accuracy"]) * evaluation["examples"])


def errors_from_result(result: dict) -> int:
    assert result["examples"] == TEST_DIGITS and result["split"] == "test"
    return round(result["top1_error"] * result["examples"] / 100)


def test_model_records_what_using_it_needs(run):
    workdir, _ = run
    for where in (workdir / "model", workdir / "checkpoints"):
        usage = read_usage(where)
        assert usage.preprocessing.name == "torchvision"
        assert usage.preprocessing.mean == preprocessing.TORCHVISION_MEAN
        assert usage.input_size == 32 and usage.eval_scale == 32
        assert usage.train_flip is False
        assert usage.class_names == tuple(str(digit) for digit in range(10))


def test_documented_command_gives_the_training_runs_accuracy(run, tmp_path, monkeypatch, capsys):
    """README.md's command, from a folder where runs/demo is the run. It runs in this process, as
    `python -m` runs the module (`runpy`), with this environment's interpreter (the command's
    .venv/bin/python): a process of its own would start Python, JAX and TensorFlow again for
    the same code (tests/test_faults.py and tests/test_standalone.py run experiments/evaluate.py
    in processes of their own). tests/test_readme.py leaves the command to this test."""
    workdir, summary = run
    assert summary["eval"]["accuracy"] > 0.5, summary  # learnt: the errors are not chance
    written = json.loads((workdir / "summary.json").read_text())
    assert DOCUMENTED in (ROOT / "README.md").read_text()
    python, dash_m, module, *argv = DOCUMENTED.split()
    assert (python, dash_m) == (".venv/bin/python", "-m")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(workdir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [module, *argv])
    monkeypatch.delitem(sys.modules, module, raising=False)  # run afresh
    with pytest.raises(SystemExit) as stop:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    out, err = capsys.readouterr()
    assert stop.value.code == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    # The protocol the run evaluated with (its usage record says "center"), at its own size.
    assert (result["protocol"], result["scales"], result["flips"]) == ("center", [32], False)
    assert errors_from_result(result) == errors_from_training(written)


def test_training_checkpoint_evaluates_the_same(run, tmp_path):
    workdir, summary = run
    (step,) = [name for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
    output = tmp_path / "step.json"
    argv = ["--checkpoint", str(workdir / "checkpoints" / step), "--dataset", "digits"]
    assert evaluate_cli.main([*argv, "--protocol", "center", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["scales"] == [32]
    assert errors_from_result(result) == errors_from_training(summary)


def test_flags_that_contradict_the_records_warn(run):
    workdir, _ = run
    model = [read_usage(workdir / "model")]  # the helpers take usage records
    with pytest.warns(UserWarning, match="--input-size 64 overrides"):
        assert evaluate_cli.input_size(model, 64) == 64
    with pytest.warns(UserWarning, match="--flips on nets trained without flips"):
        assert evaluate_cli.use_flips(model, True) is True
    assert evaluate_cli.use_flips(model, None) is False
    assert evaluate_cli.chosen_scales(model, None, 32) == [32]


def test_dense_evaluation_at_the_trained_size_folds_the_adaptive_pooling():
    """A 32x32-trained net on a 64x64 view: the mean over pool5's 2x2 positions of its classifier
    head applied to each position (its 1x1 map averaged up to 7x7, as in training)."""
    model = vgg_flax.create_model("A", batch_norm=True, num_classes=10, **train_tiny.TINY)
    variables = random_variables(model)  # non-zero biases and statistics, drawn with NumPy
    params = variables["params"]
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    scorer = protocols.scorer(model, variables, 32)
    apply = jax.jit(model.apply, static_argnames=("features",))  # a program, not op by op
    pool5 = apply(variables, images, features=("pool5",))["pool5"]
    logits = []
    for row in range(2):
        for col in range(2):
            pooled = adaptive_avg_pool(pool5[:, row : row + 1, col : col + 1], (7, 7))
            x = jnp.einsum("nhwc,hwcd->nd", pooled, params["fc6"]["kernel"])
            x = jax.nn.relu(x + params["fc6"]["bias"])
            x = jax.nn.relu(x @ params["fc7"]["kernel"][0, 0] + params["fc7"]["bias"])
            logits.append(x @ params["fc8"]["kernel"][0, 0] + params["fc8"]["bias"])
    expected = jax.nn.softmax(sum(logits) / 4)
    np.testing.assert_allclose(scorer(images, np.full((2, 2), 64)), expected, rtol=1e-5, atol=1e-6)
    # At the trained size the scorer is the classifier itself.
    crops = images[:, :32, :32]
    np.testing.assert_allclose(
        scorer(crops, np.full((2, 2), 32)),
        jax.nn.softmax(apply(variables, crops)),
        rtol=1e-6,
        atol=1e-7,
    )
