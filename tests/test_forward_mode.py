"""Forward-mode autodiff through the optimised ops (vgg_flax/models/ops.py) and the models.

`jax.jvp`, `jax.jacfwd` and Hessian-vector products (forward over reverse) with the default
kernels ("auto": the CPU formulations on CPUs) equal those with kernels="lax" (XLA's own
convolution and reduce_window, differentiated by JAX), within float32 rounding. Reverse mode must
still run the fast backward: its program keeps the row loop of the kernel gradient.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seeded import he_variables

from vgg_flax.models import ops
from vgg_flax.models.vgg import create_model

NARROW = dict(width=0.125, head_width=32, num_classes=10)  # narrow nets
# XLA's quick compile (no LLVM optimisation) for the programs that run a narrow net once:
# compiling dominates them, and the arithmetic is the same. Not for jacfwd's, which pushes a
# tangent for each of the image's 3072 values through the net: optimised code is faster there.
quick_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)
VARIANTS = {
    "A": dict(),
    "A_bn": dict(batch_norm=True),
    "A_avg": dict(pooling="avg"),
}


def _close(actual, expected, rtol=2e-4):
    """Leafwise equal within float32 rounding, relative to each leaf's largest entry."""
    for a, e in zip(
        jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True
    ):
        a, e = np.asarray(a), np.asarray(e)
        assert np.all(np.isfinite(a))
        scale = float(np.max(np.abs(e)))
        assert scale > 0  # a vanishing reference would pass anything
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale)


def _models(options: dict):
    return {k: create_model("A", kernels=k, **NARROW, **options) for k in ops.KERNELS}


# Random arrays are drawn with numpy: jax.random would compile a program per shape.
def _normal(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _random_like(tree, seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), tree)


@pytest.fixture(scope="module", params=list(VARIANTS))
def setup(request):
    models = _models(VARIANTS[request.param])
    images = _normal((2, 32, 32, 3), 1)
    return (
        models,
        he_variables(jax.eval_shape(models["auto"].init, jax.random.key(0), images)),
        images,
    )


def _apply(model, variables):
    return lambda params, x: model.apply({**variables, "params": params}, x)


def test_jvp_equals_lax(setup):
    models, variables, images = setup
    params = variables["params"]
    tangents = (_random_like(params, 2), _random_like(images, 3))
    out = {}
    for k, m in models.items():
        f = _apply(m, variables)
        out[k] = quick_jit(lambda p, x, f=f: jax.jvp(f, (p, x), tangents))(params, images)
    _close(out["auto"], out["lax"])
    # Eagerly too (the tangent primitives' own evaluation, not their lowering), once: op by op,
    # the variants' extra layers add dispatches, not primitives (CONV_CASES test each op eagerly).
    if not (models["auto"].batch_norm or models["auto"].pooling == "avg"):
        eager = jax.jvp(_apply(models["auto"], variables), (params, images), tangents)
        _close(eager, out["lax"])


def test_jacfwd_of_a_logit_slice_equals_lax(setup):
    models, variables, images = setup
    image = images[:1]
    jac = {}
    for k, m in models.items():
        f = _apply(m, variables)
        jac[k] = jax.jit(jax.jacfwd(lambda x, f=f: f(variables["params"], x)[0, :3]))(image)
    assert jac["auto"].shape == (3, *image.shape)
    _close(jac["auto"], jac["lax"])


def test_hessian_vector_product_equals_lax(setup):
    models, variables, images = setup
    params, labels = variables["params"], jnp.array([3, 7])
    vector = _random_like(params, 4)

    def hvp(model):
        def loss(p):
            logits = _apply(model, variables)(p, images)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

        return quick_jit(lambda p: jax.jvp(jax.grad(loss), (p,), (vector,)))(params)

    (grad_auto, hv_auto), (grad_lax, hv_lax) = hvp(models["auto"]), hvp(models["lax"])
    _close(grad_auto, grad_lax)
    _close(hv_auto, hv_lax, rtol=1e-3)  # second order: each product's rounding, twice


def test_dense_mode_jvp_and_hvp_equal_lax():
    # Dense evaluation runs fc6-fc8 as convolutions over the whole pool5 map (at 224: 7x7).
    models = _models({})
    images = _normal((1, 224, 224, 3), 1)
    variables = he_variables(jax.eval_shape(models["auto"].init, jax.random.key(0), images))
    params, vector = variables["params"], _random_like(variables["params"], 5)
    out = {}
    for k, m in models.items():

        def score(p, m=m):
            return m.apply({"params": p}, images, mode="dense")

        def hvp(p, score=score):
            return jax.jvp(jax.grad(lambda q: jnp.sum(jnp.sin(score(q)))), (p,), (vector,))[1]

        out[k] = quick_jit(
            lambda p, score=score, hvp=hvp: (jax.jvp(score, (p,), (vector,)), hvp(p))
        )(params)
    _close(out["auto"][0], out["lax"][0])
    _close(out["auto"][1], out["lax"][1], rtol=1e-3)


# Each CPU formulation of `conv2d`: plain (8x8), small map (2x2), 1x1 kernel, whole window.
CONV_CASES = [(8, 3, 1), (2, 3, 1), (5, 1, 0), (7, 7, 0)]


@pytest.mark.parametrize(("side", "k", "padding"), CONV_CASES)
def test_conv2d_tangents_and_transpose(side, k, padding):
    rng = np.random.default_rng(side * 10 + k)
    x, dx = (rng.standard_normal((2, side, side, 4), np.float32) for _ in range(2))
    w, dw = (rng.standard_normal((k, k, 4, 5), np.float32) for _ in range(2))
    _, tangent = jax.jvp(lambda a, b: ops.conv2d(a, b, padding), (x, w), (dx, dw))
    _, expected = jax.jvp(lambda a, b: ops.plain_conv(a, b, padding), (x, w), (dx, dw))
    _close(tangent, expected)
    # Only the input or only the kernel varying (the other's tangent a symbolic zero).
    _close(
        jax.jvp(lambda a: ops.conv2d(a, w, padding), (x,), (dx,))[1],
        jax.jvp(lambda a: ops.plain_conv(a, w, padding), (x,), (dx,))[1],
    )
    _close(
        jax.jit(jax.jacfwd(lambda b: ops.conv2d(x, b, padding)[0, 0, 0]))(w),
        jax.jacfwd(lambda b: ops.plain_conv(x, b, padding)[0, 0, 0])(w),
    )
    # The backward reverse mode runs is the transpose of the tangent map: <J t, g> = <t, J^T g>.
    g = _normal(tangent.shape, 9)
    gx, gw = jax.vjp(lambda a, b: ops.conv2d(a, b, padding), x, w)[1](g)
    lhs = float(jnp.vdot(tangent, g))
    np.testing.assert_allclose(lhs, float(jnp.vdot(dx, gx) + jnp.vdot(dw, gw)), rtol=1e-4)


def test_max_pool_tangent_takes_the_first_maximum_including_ties():
    # Integers in 0..2 tie often; odd sides drop the last row and column (floor mode).
    x = np.random.default_rng(0).integers(0, 3, (2, 7, 9, 3)).astype(np.float32)
    dx = _normal(x.shape, 1)
    _, tangent = jax.jvp(ops.max_pool_2x2, (x,), (dx,))
    xn, dxn = np.asarray(x), np.asarray(dx)
    expected = np.zeros((2, 3, 4, 3), np.float32)
    for n, i, j, c in np.ndindex(expected.shape):
        window = xn[n, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c].reshape(-1)
        first = int(np.argmax(window))  # numpy's argmax: the first maximum, row-major
        expected[n, i, j, c] = dxn[n, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c].reshape(-1)[first]
    np.testing.assert_array_equal(np.asarray(tangent), expected)
    g = _normal(tangent.shape, 2)
    (gx,) = jax.vjp(ops.max_pool_2x2, x)[1](g)
    np.testing.assert_allclose(float(jnp.vdot(tangent, g)), float(jnp.vdot(dx, gx)), rtol=1e-5)
    # Without ties, the same as reduce_window's own jvp.
    y = _normal(x.shape, 3)
    _close(jax.jvp(ops.max_pool_2x2, (y,), (dx,))[1], jax.jvp(ops.plain_max_pool, (y,), (dx,))[1])


def _stablehlo(fn, *args, platforms) -> str:
    return jax.export.export(jax.jit(fn), platforms=platforms)(*args).mlir_module()


def test_reverse_mode_keeps_the_fast_kernel_gradient_and_forward_mode_lowers_everywhere():
    x = jnp.zeros((2, 8, 8, 4))
    w = jnp.zeros((3, 3, 4, 5))

    def kernel_grad(b):
        return jax.grad(lambda c: jnp.sum(ops.conv2d(x, c, 1)))(b)

    # On CPUs the kernel gradient is the loop over output rows (ops._kernel_grad), not
    # autodiff's transpose of the tangent (a convolution).
    cpu = _stablehlo(kernel_grad, w, platforms=["cpu"])
    assert "stablehlo.while" in cpu and "stablehlo.dot_general" in cpu
    accelerators = _stablehlo(kernel_grad, w, platforms=["cuda", "tpu"])
    assert "stablehlo.while" not in accelerators and "dot_general" not in accelerators

    def tangent(a):
        return jax.jvp(lambda b: ops.max_pool_2x2(ops.conv2d(b, w, 1)), (a,), (a,))[1]

    text = _stablehlo(tangent, x, platforms=["cuda", "tpu"])
    assert re.search(r"stablehlo\.convolution", text) and "reduce_window" in text
    assert "dot_general" not in text
