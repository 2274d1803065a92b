"""Accelerator readiness without an accelerator: the steps lower for CUDA and TPU (jax.export).

vgg_flax.models.ops picks XLA:CPU formulations with `lax.platform_dependent`: matrix products
(`dot_general`) for whole-window and 1x1 convolutions and for kernel gradients, and max pooling
over reshaped windows with a mask for its gradient. A program exported for CUDA and TPU must hold
only the standard ops: every convolution a `convolution`, pooling a `reduce_window` whose
gradient is a `select_and_scatter`, and no `dot_general` at all. The CPU export of the same
training step shows that these markers do tell the two formulations apart.
"""

import re
from collections import Counter

import jax
import jax.numpy as jnp
import pytest
import train_tiny

from vgg_flax import parallel
from vgg_flax.evaluate.batching import Scorer
from vgg_flax.models import arch
from vgg_flax.models.vgg import create_model
from vgg_flax.train import optim
from vgg_flax.train.step import create_state, make_eval_step, make_train_step

ACCELERATORS = ["cuda", "tpu"]
SIZE, BATCH = 224, 2  # 224: fc6 sees a whole 7x7 map (the CPU's matrix-product case)


def ops(fn, *args, platforms) -> Counter:
    """How often each StableHLO op occurs in `fn` exported for `platforms`."""
    text = jax.export.export(fn, platforms=platforms)(*args).mlir_module()
    return Counter(re.findall(r"stablehlo\.([a-z_]+)", text))


@pytest.fixture(scope="module")
def setup():
    model = create_model("A", num_classes=10, **train_tiny.TINY)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx = optim.make_optimizer(lambda step: 0.01, momentum=0.9)
    images = jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda key: model.init(key, jnp.zeros(images.shape)), jax.random.key(0)
    )
    state = jax.eval_shape(
        lambda v, key: create_state(v, key, mesh, tx), variables, jax.random.key(1)
    )
    batch = {
        "image": images,
        "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((BATCH,), jnp.bool_),
    }
    layers = arch.layers("A", 1.0)
    convs = sum(layer.kind == "conv" for layer in layers) + 3  # fc6..fc8 are convolutions
    pools = sum(layer.kind == "pool" for layer in layers)
    return model, mesh, tx, variables, state, batch, convs, pools


def test_training_step_lowers_to_standard_ops_only(setup):
    model, mesh, tx, _, state, batch, convs, pools = setup
    step = make_train_step(model, mesh, tx, weight_decay=5e-4, l2_mask="all")
    accelerator = ops(step, state, batch, platforms=ACCELERATORS)
    cpu = ops(step, state, batch, platforms=["cpu"])
    assert accelerator["dot_general"] == 0
    # Counts are at least: a program for two platforms may hold a copy per platform.
    assert accelerator["reduce_window"] >= pools and accelerator["select_and_scatter"] >= pools
    # Forward and kernel gradient of every layer, input gradient of all but the first.
    assert accelerator["convolution"] >= 3 * convs - 1
    # The markers are real: the CPU program has the matrix products and no pooling windows.
    assert cpu["dot_general"] > 0
    assert cpu["reduce_window"] == cpu["select_and_scatter"] == 0
    assert cpu["convolution"] < 3 * convs - 1


def test_evaluation_steps_lower_to_standard_ops_only(setup):
    model, mesh, _, variables, state, batch, convs, pools = setup
    found = ops(make_eval_step(model, mesh), state, batch, platforms=ACCELERATORS)
    scorer = Scorer(model, jax.tree.map(jnp.zeros_like, variables), mesh)
    valid = jax.ShapeDtypeStruct((BATCH, 2), jnp.int32)
    dense = ops(scorer._posteriors, variables, batch["image"], valid, platforms=ACCELERATORS)
    for counts in (found, dense):
        assert counts["dot_general"] == 0
        assert counts["convolution"] >= convs and counts["reduce_window"] >= pools
