"""The train step's update is SGD on cross-entropy plus the L2 term, computed independently.

Neither the update's formula nor bfloat16's dtype rules depend on the net's depth: both are
checked on A's first two blocks and the head, which hold every kind of parameter (BatchNorm's
too, with batch_norm=True) and compile in a fraction of A's time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import train_tiny

from vgg_flax.models.vgg import create_model
from vgg_flax.parallel import make_mesh, to_global
from vgg_flax.train.init import init_variables
from vgg_flax.train.optim import make_optimizer
from vgg_flax.train.step import create_state, make_train_step

# A's first two blocks (conv1_1, pool1, conv2_1, pool2), the other three poolings and the head.
SHORT = (64, "M", 128, "M", "M", "M", "M")


@pytest.fixture(scope="module")
def reference():
    """The short net, its variables, a batch, and the cross-entropy's value and gradient."""
    model = create_model(
        SHORT, num_classes=10, dropout_rate=0.0, weight_init="torchvision", **train_tiny.TINY
    )
    variables = init_variables(model, jax.random.key(0), 32)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    labels = np.array([1, 2, 3, 4], np.int32)

    def cross_entropy(params):
        logits = model.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    value, grads = jax.jit(jax.value_and_grad(cross_entropy))(variables["params"])
    return model, variables, images, labels, float(value), grads


@pytest.mark.parametrize("l2_mask", ["kernels", "all"])
def test_first_step_is_lr_times_cross_entropy_gradient_plus_weight_decay(l2_mask, reference):
    model, variables, images, labels, cross_entropy, grads = reference
    mesh = make_mesh()
    params = variables["params"]
    lr, wd = 0.1, 0.05  # a large decay so a missing or misplaced L2 term shows
    tx = make_optimizer(lambda step: lr, momentum=0.9)
    step = make_train_step(model, mesh, tx, weight_decay=wd, l2_mask=l2_mask)
    state = create_state(variables, jax.random.key(1), mesh, tx)
    batch = to_global({"image": images, "label": labels}, mesh)
    new, metrics = step(state, batch)
    assert float(metrics["learning_rate"]) == pytest.approx(lr)
    for layer, leaves in params.items():
        for name, w in leaves.items():
            decayed = l2_mask == "all" or name == "kernel"
            expected = w - lr * (grads[layer][name] + (wd * w if decayed else 0.0))
            got = new["params"][layer][name]
            np.testing.assert_allclose(
                got, expected, rtol=1e-4, atol=1e-6, err_msg=f"{layer}/{name}"
            )
    squares = sum(
        float(jnp.sum(w**2))
        for path, w in jax.tree_util.tree_leaves_with_path(params)
        if l2_mask == "all" or path[-1].key == "kernel"
    )
    assert float(metrics["l2"]) == pytest.approx(0.5 * wd * squares, rel=1e-5)
    assert float(metrics["cross_entropy"]) == pytest.approx(cross_entropy, rel=1e-5)
    assert int(new["step"]) == 1


def test_bfloat16_compute_keeps_float32_parameters_and_tracks_float32():
    mesh = make_mesh()
    rng = np.random.default_rng(1)
    batch = to_global(
        {
            "image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
            "label": np.array([0, 1, 2, 3], np.int32),
        },
        mesh,
    )
    results = {}
    variables = None
    for dtype in (jnp.float32, jnp.bfloat16):
        model = create_model(
            SHORT, batch_norm=True, num_classes=10, dropout_rate=0.0, dtype=dtype, **train_tiny.TINY
        )
        if variables is None:  # the same float32 start for both (param_dtype is float32)
            variables = init_variables(model, jax.random.key(0), 32)
        tx = make_optimizer(lambda step: 0.01, momentum=0.9)
        step = make_train_step(model, mesh, tx, weight_decay=5e-4, l2_mask="kernels")
        state = create_state(variables, jax.random.key(1), mesh, tx)
        state, metrics = step(state, batch)
        assert {leaf.dtype for leaf in jax.tree.leaves(state["params"])} == {jnp.dtype("float32")}
        momentum = state["opt_state"][0].trace  # optax.trace's buffers
        assert {leaf.dtype for leaf in jax.tree.leaves(momentum)} == {jnp.dtype("float32")}
        results[dtype] = (float(metrics["cross_entropy"]), state["params"]["fc8"]["kernel"])
    (ce32, fc8_32), (ce16, fc8_16) = results[jnp.float32], results[jnp.bfloat16]
    assert ce16 == pytest.approx(ce32, rel=2e-2)  # bfloat16 keeps ~3 significant digits
    np.testing.assert_allclose(fc8_16, fc8_32, atol=1e-3 * float(jnp.max(jnp.abs(fc8_32))))
