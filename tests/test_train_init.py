"""Starting points: the paper's warm start from a trained A, and copies of same-arch nets.

The copying tests need variables that tell every layer apart, not a real initialisation: theirs
are seeded normals in the shapes of a narrow net's (`fresh`: Flax traces `model.init`, nothing
is compiled). `init_variables` itself, which compiles its programs, is the last test's: its
values are exactly Flax's one-program init's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_tiny

from vgg_flax import save
from vgg_flax.models.vgg import create_model
from vgg_flax.train import recipe
from vgg_flax.train.init import copy_layers, init_variables, warm_start_layers
from vgg_flax.train.trainer import start_from


def tiny(arch: str, **options):
    return create_model(arch, **{"num_classes": 10, **train_tiny.TINY, **options})


def fresh(arch: str, seed: int, **options) -> dict:
    """Variables of a narrow `arch` net for 32x32 inputs: its shapes, seeded normal values."""
    model = tiny(arch, **options)
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    init = functools.partial(model.init, train=False)
    shapes = jax.eval_shape(init, jax.random.key(0), images)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), dict(shapes))


def same(a, b) -> bool:
    """Whether two variable trees (of one structure, else an error) hold the same values."""
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def test_warm_start_copies_exactly_the_papers_layers_from_a(tmp_path):
    trained_a, target = fresh("A", 1), fresh("D", 2)
    path = save(tmp_path / "a", tiny("A"), trained_a)
    started = start_from(target, "D", path)
    copied = {"conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"}
    assert set(recipe.WARM_START_LAYERS.values()) == copied
    for name, layer in started["params"].items():
        if name in copied:
            assert same(layer, trained_a["params"][name]), name
        else:  # the rest keeps its own random init (D's conv1_2, conv3_3, conv4_x, conv5_x...)
            assert same(layer, target["params"][name]), name
    # A's conv4_1 has the same shape as D's conv4_1, but the paper copies only four convs.
    assert not same(started["params"]["conv4_1"], trained_a["params"]["conv4_1"])


def test_warm_start_brings_batchnorm_of_copied_convs_along():
    trained_a = fresh("A", 1, batch_norm=True)
    trained_a["batch_stats"] = jax.tree.map(lambda x: x + 3.0, trained_a["batch_stats"])
    target = fresh("E", 2, batch_norm=True)
    started = copy_layers(target, trained_a, warm_start_layers("A", "E"))
    assert same(started["batch_stats"]["bn3_2"], trained_a["batch_stats"]["bn3_2"])
    assert same(started["batch_stats"]["bn3_3"], target["batch_stats"]["bn3_3"])
    assert same(started["params"]["bn2_1"], trained_a["params"]["bn2_1"])


def test_same_arch_copies_everything_and_fc8_can_be_skipped(tmp_path):
    source = fresh("C", 1)
    mapping = warm_start_layers("C", "C")
    assert same(copy_layers(fresh("C", 2), source, mapping), source)
    other_classes = fresh("C", 3, num_classes=5)
    with pytest.raises(ValueError, match="shape mismatch at params/fc8"):
        copy_layers(other_classes, source, mapping)
    path = save(tmp_path / "c", tiny("C"), source)
    started = start_from(other_classes, "C", path, skip=("fc8",))
    assert same(started["params"]["conv5_3"], source["params"]["conv5_3"])
    assert same(started["params"]["fc8"], other_classes["params"]["fc8"])


def test_unsupported_sources_are_refused():
    with pytest.raises(ValueError, match="cannot start a C net from a trained B"):
        warm_start_layers("B", "C")
    assert np.all(
        np.asarray(list(warm_start_layers("vgg11", "vgg16"))) == list(recipe.WARM_START_LAYERS)
    )


# A's first two blocks and the head: every kind of variable (conv, BatchNorm, fc) at a fraction
# of A's compile time (Flax's one-program init, the reference, lowers the whole forward pass).
SHORT = (64, "M", 128, "M", "M", "M", "M")


@pytest.mark.parametrize("batch_norm", [False, True])
def test_fresh_init_equals_one_program_init(batch_norm):
    # init_variables makes the parameters in one program, or in several (largest first); each
    # value must be exactly what Flax's one-program init gives for the same key.
    model = tiny(SHORT, batch_norm=batch_norm)
    key = jax.random.key(7)
    expected = jax.jit(model.init)(key, jnp.zeros((1, 32, 32, 3)))
    # The two largest variables get programs of their own, as VGG16's fc6 and fc7 do.
    sizes = sorted(x.nbytes for x in jax.tree.leaves(expected))
    got = init_variables(model, key, 32, own_program_bytes=sizes[-2])
    assert jax.tree.structure(got) == jax.tree.structure(dict(expected))
    assert same(got, expected)
    assert same(init_variables(model, key, 32), expected)
