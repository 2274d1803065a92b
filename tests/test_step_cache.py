"""The stored training step (vgg_flax/train/step_cache.py): the same numbers as the traced step,
read back without tracing, a new file for anything that shapes the step, damaged files
replaced, and a trainer's rerun that reads it."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from train_runner import small_config
from train_tiny import TINY

import vgg_flax
from vgg_flax.models.vgg import create_model
from vgg_flax.parallel import make_mesh, to_global
from vgg_flax.train import step_cache, trainer
from vgg_flax.train.init import init_variables
from vgg_flax.train.optim import make_optimizer
from vgg_flax.train.step import create_state, make_train_step

IDENTITY = {"config": "tiny A with BatchNorm"}


@pytest.fixture(scope="module")
def parts():
    # "lax" kernels compile in a third of the time of the CPU forms; what is stored does not
    # depend on them.
    model = create_model(
        "A", batch_norm=True, num_classes=10, weight_init="torchvision", kernels="lax", **TINY
    )
    mesh = make_mesh()
    tx = make_optimizer(lambda step: 0.01, momentum=0.9)
    variables = jax.device_get(init_variables(model, jax.random.key(0), 32))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "label": rng.integers(0, 10, size=8).astype(np.int32),
    }
    step = make_train_step(model, mesh, tx, weight_decay=5e-4, l2_mask="kernels")
    return mesh, tx, variables, to_global(batch, mesh), step


def _two_steps(step, parts):
    mesh, tx, variables, batch, _ = parts
    state = create_state(variables, jax.random.key(1), mesh, tx)  # donated: a new one each time
    state, first = step(state, batch)
    state, second = step(state, batch)
    return jax.device_get((state, first, second))


def _equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_stored_step_gives_the_traced_steps_numbers_and_is_read_without_tracing(
    parts, tmp_path, monkeypatch
):
    mesh, *_, step = parts
    traced = _two_steps(step, parts)
    stored = _two_steps(step_cache.cached_train_step(step, mesh, tmp_path, IDENTITY), parts)
    files = list((tmp_path / step_cache.FOLDER).iterdir())
    assert len(files) == 1 and _equal(stored, traced)

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced again although the step was stored")

    monkeypatch.setattr(step_cache, "_export", no_tracing)
    again = _two_steps(step_cache.cached_train_step(step, mesh, tmp_path, IDENTITY), parts)
    assert _equal(again, traced)


def test_another_identity_is_another_file_and_a_damaged_file_is_replaced(parts, tmp_path):
    mesh, *_, step = parts
    folder = tmp_path / step_cache.FOLDER
    _two_steps(step_cache.cached_train_step(step, mesh, tmp_path, IDENTITY), parts)
    (first,) = folder.iterdir()
    _two_steps(step_cache.cached_train_step(step, mesh, tmp_path, {"config": "other"}), parts)
    assert len(list(folder.iterdir())) == 2

    first.write_bytes(b"not a stored step")
    again = _two_steps(step_cache.cached_train_step(step, mesh, tmp_path, IDENTITY), parts)
    assert _equal(again, _two_steps(step, parts))
    assert first.read_bytes() != b"not a stored step"  # stored anew


@pytest.mark.tensorflow  # trains on the digits
def test_a_rerun_of_the_trainer_reads_its_stored_step(tmp_path, monkeypatch):
    config = small_config({"total_steps": 1, "checkpoint.every_steps": 1})
    cache = tmp_path / "cache"  # the steps' folder only: compiled programs stay in the session's
    monkeypatch.setattr(trainer.compile_cache, "enable", lambda: str(cache))
    first = trainer.train(config, str(tmp_path / "one"))
    (stored,) = (cache / step_cache.FOLDER).iterdir()

    def no_tracing(*args, **kwargs):
        raise AssertionError("the rerun traced its step again")

    monkeypatch.setattr(step_cache, "_export", no_tracing)
    second = trainer.train(config, str(tmp_path / "two"))
    assert (
        first["eval"]
        and second["eval"] == first["eval"]
        and list((cache / step_cache.FOLDER).iterdir()) == [stored]
    )
    models = [vgg_flax.load(tmp_path / run / "model")[1] for run in ("one", "two")]
    assert _equal(*models)
