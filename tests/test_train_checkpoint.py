"""Training checkpoints: keep-last-k, exact round trip, and refusal of foreign or corrupt ones."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_flax import architecture, create_model
from vgg_flax.parallel import make_mesh, replicated
from vgg_flax.weights import checkpoint

IDENTITY = architecture(create_model("A", batch_norm=True, num_classes=10))


def state_at(step: int) -> dict:
    key = jax.random.key(step)
    state = {
        "step": jnp.int32(step),
        "params": {"conv1_1": {"kernel": jax.random.normal(key, (3, 3, 3, 4))}},
        "opt_state": (jnp.full((4,), step, jnp.float32),),
        "rng": jax.random.key_data(key),
    }
    return jax.device_put(state, replicated(make_mesh()))


def test_keeps_the_last_k_and_restores_state_and_meta_exactly(tmp_path):
    manager = checkpoint.training_manager(tmp_path, keep=2)
    for step in (1, 2, 3):
        meta = {
            **IDENTITY,
            "step": step,
            "data": {"positions": [step * 8]},
            "plateau": {"drops": 1},
        }
        checkpoint.save_training(manager, step, state_at(step), meta)
    assert manager.all_steps() == [2, 3]
    assert sorted(os.listdir(tmp_path)) == ["2", "3"]
    state, meta = checkpoint.restore_training(manager, state_at(0), IDENTITY)
    expected = state_at(3)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert state["params"]["conv1_1"]["kernel"].sharding == replicated(make_mesh())
    assert meta["data"] == {"positions": [24]} and meta["plateau"] == {"drops": 1}


def test_empty_directory_restores_nothing(tmp_path):
    manager = checkpoint.training_manager(tmp_path / "none")
    assert checkpoint.restore_training(manager, state_at(0), IDENTITY) is None
    with pytest.raises(ValueError, match="keep"):
        checkpoint.training_manager(tmp_path, keep=0)


def test_another_networks_checkpoint_is_refused(tmp_path):
    manager = checkpoint.training_manager(tmp_path)
    checkpoint.save_training(manager, 5, state_at(5), {**IDENTITY, "arch": "D"})
    with pytest.raises(ValueError, match="belongs to another network.*'arch': 'D'"):
        checkpoint.restore_training(manager, state_at(0), IDENTITY)
    with pytest.raises(ValueError, match="lacks"):
        checkpoint.save_training(manager, 6, state_at(6), {"arch": "A"})


def test_corrupt_checkpoint_is_refused_with_a_clear_error(tmp_path):
    manager = checkpoint.training_manager(tmp_path)
    checkpoint.save_training(manager, 7, state_at(7), dict(IDENTITY))
    for root, _, files in os.walk(tmp_path / "7" / "state"):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            with open(path, "wb") as f:  # same size, garbage content
                f.write(np.random.default_rng(0).bytes(max(size, 16)))
    fresh = checkpoint.training_manager(tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint .*7 is corrupt"):
        checkpoint.restore_training(fresh, state_at(0), IDENTITY)


def test_a_flipped_bit_in_the_state_data_is_refused(tmp_path):
    # Orbax alone restores most flipped bits in the array data as changed values without a word.
    manager = checkpoint.training_manager(tmp_path)
    checkpoint.save_training(manager, 8, state_at(8), dict(IDENTITY))
    files = [os.path.join(r, n) for r, _, ns in os.walk(tmp_path / "8" / "state") for n in ns]
    refused = 0
    for data_file in (f for f in files if f"{os.sep}d{os.sep}" in f):
        original = open(data_file, "rb").read()
        for offset in range(0, len(original), max(1, len(original) // 5)):
            flipped = bytearray(original)
            flipped[offset] ^= 0x04
            open(data_file, "wb").write(bytes(flipped))
            try:  # either refused, or (a byte Orbax never reads) restored unchanged
                state, _ = checkpoint.restore_training(
                    checkpoint.training_manager(tmp_path), state_at(0), IDENTITY
                )
            except ValueError as error:
                assert "8 is corrupt" in str(error) and str(tmp_path) in str(error)
                refused += 1
                continue
            for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(state_at(8)), strict=True):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        open(data_file, "wb").write(original)
    assert refused >= 5
    state, _ = checkpoint.restore_training(checkpoint.training_manager(tmp_path), None, IDENTITY)
    assert int(state["step"]) == 8  # restored as saved (dicts, no target): the hash still holds
