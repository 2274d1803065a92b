"""Faults in what vgg-flax writes and reads: flipped bits and bad metadata in checkpoints."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from test_export import random_variables
from train_tiny import TINY

import vgg_flax
from vgg_flax import create_model
from vgg_flax.weights import checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = create_model("A", batch_norm=True, num_classes=5, **TINY)
    variables = random_variables(model)  # drawn with NumPy: no initialisation to compile
    path = tmp_path_factory.mktemp("ckpt") / "model"
    vgg_flax.save(path, model, variables)
    return path, variables


def _data_files(path) -> list[str]:
    """The files that hold array bytes (not the JSON metadata)."""
    found = []
    for root, _, names in os.walk(os.path.join(path, "variables")):
        found += [os.path.join(root, n) for n in names if not n.startswith("_")]
    return sorted(found, key=os.path.getsize)


def test_round_trip_and_hash_recorded(saved):
    path, variables = saved
    model, loaded, _ = vgg_flax.load(path)
    assert len(checkpoint.read_metadata(path)[checkpoint.HASH_KEY]) == 64
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_every_flipped_byte_in_the_data_is_refused(saved, tmp_path):
    path, _ = saved
    biggest = _data_files(path)[-1]
    size = os.path.getsize(biggest)
    rng = np.random.default_rng(0)
    for offset in rng.integers(0, size, 8):
        copy = tmp_path / f"flip{offset}"
        shutil.copytree(path, copy)
        target = os.path.join(copy, os.path.relpath(biggest, path))
        data = bytearray(open(target, "rb").read())
        data[int(offset)] ^= 0x10
        open(target, "wb").write(bytes(data))
        with pytest.raises(ValueError, match=str(copy)):
            vgg_flax.load(copy)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arch": "Z"}, "arch 'Z'"),
        ({"arch": [64, "M", "what"]}, "layer list"),
        ({"num_classes": -3}, "num_classes -3"),
        ({"width": 0}, "width 0"),
        ({"pooling": "median"}, "pooling"),
    ],
)
def test_invalid_metadata_is_refused_before_building(saved, tmp_path, change, message):
    path, _ = saved
    copy = tmp_path / "bad"
    shutil.copytree(path, copy)
    meta_file = os.path.join(copy, "metadata", "metadata")
    meta = json.load(open(meta_file))
    meta.update(change)
    json.dump(meta, open(meta_file, "w"))
    with pytest.raises(ValueError, match=f"{copy}.*invalid metadata.*{message}"):
        vgg_flax.load(copy)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim.learning_rate": 0.0}, "learning_rate must be a positive"),
        ({"optim.learning_rate": -0.1}, "learning_rate must be a positive"),
        ({"optim.factor": 0.0}, "factor must lie strictly between 0 and 1"),
        ({"optim.factor": 1.0}, "factor must lie strictly between 0 and 1"),
    ],
)
def test_options_that_cannot_work_are_refused_before_any_work(overrides, message):
    from train_runner import small_config

    from vgg_flax.train import trainer

    with pytest.raises(ValueError, match=message):
        trainer.check_config(small_config(overrides))


def test_batch_sizes_must_divide_over_the_devices():
    from train_runner import small_config

    from vgg_flax.train import trainer

    trainer._check_devices(small_config({"batch_size": 8, "eval_batch_size": 12}), 4)
    with pytest.raises(ValueError, match="eval_batch_size 10 is not divisible by the 4 devices"):
        trainer._check_devices(small_config({"batch_size": 8, "eval_batch_size": 10}), 4)


def test_summary_is_strict_json(tmp_path):
    from vgg_flax.train import trainer

    trainer._write_summary(str(tmp_path), {"images_per_s": float("nan"), "eval": {"loss": 1.5}})
    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text) == {"images_per_s": None, "eval": {"loss": 1.5}}
    assert trainer._read_summary(str(tmp_path))["eval"] == {"loss": 1.5}


def test_a_failed_save_leaves_no_partial_folder(saved, tmp_path):
    _, variables = saved
    target = tmp_path / "broken"
    with pytest.raises(Exception):  # noqa: B017 - Orbax's own error for unserialisable metadata
        checkpoint.save_model(target, variables, {"arch": "A", "bad": object()})
    assert os.listdir(tmp_path) == []


def test_convert_checks_its_output_before_any_work(tmp_path, capsys):
    from vgg_flax.cli import main

    existing = tmp_path / "exists"
    existing.mkdir()
    missing_source = tmp_path / "not-read.pth"  # never opened: the output is refused first
    for out, message in [(existing, "already exists"), (tmp_path / "no" / "dir", "does not exist")]:
        assert main(["convert", str(missing_source), str(out)]) == 2
        error = capsys.readouterr().err
        assert message in error and "not-read.pth" not in error, error


def test_evaluate_refuses_a_missing_output_folder_before_evaluating(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [
            sys.executable,
            "experiments/evaluate.py",
            "--checkpoint",
            str(tmp_path / "none"),
            "--output",
            str(tmp_path / "missing" / "result.json"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "does not exist; create it first" in out.stderr, out.stderr[-2000:]


def test_non_finite_batchnorm_statistics_stop_the_run_and_keep_the_last_checkpoint(
    tmp_path, monkeypatch
):
    """BatchNorm's running statistics can overflow while the loss and parameters stay finite."""
    from train_runner import small_config

    from vgg_flax.train import trainer

    make = trainer.make_train_step

    def poisoned_step(*args, **kwargs):
        step = make(*args, **kwargs)
        calls = []

        def run(state, batch):
            state, metrics = step(state, batch)
            calls.append(None)
            if len(calls) == 2:  # the 2nd step: finite loss and parameters, inf statistics
                stats = jax.tree.map(  # placed as the step placed them: nothing to compile
                    lambda x: jax.device_put(np.full(x.shape, np.inf, x.dtype), x.sharding),
                    state["batch_stats"],
                )
                state = {**state, "batch_stats": stats}
            return state, metrics

        return run

    monkeypatch.setattr(trainer, "make_train_step", poisoned_step)
    config = small_config({"checkpoint.every_steps": 1, "eval_every_steps": 100, "total_steps": 3})
    with pytest.raises(
        trainer.NonFiniteLossError,
        match=r"at step 2: loss \d+\.\d+, parameters and BatchNorm statistics not finite.*"
        r"is step 1 in",
    ):
        trainer.train(config, str(tmp_path))
    manager = checkpoint.training_manager(tmp_path / "checkpoints")
    identity = {"arch": "A", "batch_norm": True, "num_classes": 10, **TINY}
    state, meta = checkpoint.restore_training(manager, None, identity)
    assert meta["step"] == 1
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state["batch_stats"]))


def test_convert_on_a_full_disk_fails_clearly_and_leaves_nothing(tmp_path):
    """A file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes every large write fail as a full
    disk does (EFBIG instead of ENOSPC)."""
    import subprocess
    import sys

    import torch

    from vgg_flax.formats.torchvision import torchvision_entries

    generator = torch.Generator().manual_seed(0)
    state = {
        e.key: torch.randn(e.shape, generator=generator).half()
        if len(e.shape) == 4  # random convolutions: more than the limit even if compressed
        else torch.zeros(e.shape, dtype=torch.float16)
        for e in torchvision_entries("vgg11")
    }
    pth = tmp_path / "vgg11.pth"
    torch.save(state, pth)
    del state
    out = tmp_path / "out" / "model"
    out.parent.mkdir()

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Limits set in a small Python that then becomes the command (no preexec_fn: this process
    # has threads). An ignored signal stays ignored across exec.
    limited = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
        "os.execv(sys.executable, [sys.executable, '-c', "
        "'import sys; from vgg_flax.cli import main; sys.exit(main())', *sys.argv[1:]])"
    )
    # --head drop: the classifier is left out (transposing fc6 takes seconds); the convolutions
    # alone are over the limit.
    result = subprocess.run(
        [sys.executable, "-c", limited, "convert", "vgg11", str(pth), str(out), "--head", "drop"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vgg-flax convert: error: could not write the checkpoint {out}")
    assert "File too large" in last and "Nothing was left behind" in last
    assert len(result.stderr.splitlines()) < 20  # not a page of tracebacks
    assert os.listdir(out.parent) == []
