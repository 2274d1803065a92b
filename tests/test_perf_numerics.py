"""The optimised operations (vgg_flax/models/ops.py) compute what the plain ones and PyTorch
compute.

References are independent of the code under test: XLA's own convolution and reduce_window with
autodiff, a float64 NumPy convolution, and real torchvision (forward and every gradient).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax import lax

import vgg_flax
from vgg_flax.models import ops as kernels
from vgg_flax.parity.torchvision import flax_layout, torch_layout, torch_model
from vgg_flax.xla_options import compiler_options


def _numpy_conv(x: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """Float64 convolution straight from the definition: a sum over the kernel's taps."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_h, out_w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = np.zeros((x.shape[0], out_h, out_w, w.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,cd->nhwd", xp[:, i : i + out_h, j : j + out_w], w[i, j])
    return out


def _xla_conv(x: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    pad = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(
        x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )


# (input side, kernel, padding): a trunk conv, the classifier's fc6 on a 7x7 map (one matrix
# product), a 1x1 conv (fc7/fc8, config C), fc6 sliding over a larger map in dense mode, and
# trunk convs on the 2x2 and 1x1 maps that go through the im2col product.
CASES = [(9, 3, 1), (7, 7, 0), (6, 1, 0), (10, 7, 0), (2, 3, 1), (1, 3, 1)]


@pytest.mark.parametrize(("side", "k", "padding"), CASES)
def test_conv2d_and_its_gradients_match_plain_convolution(side, k, padding):
    rng = np.random.default_rng(side + k)
    x = rng.standard_normal((2, side, side, 5)).astype(np.float32)
    w = rng.standard_normal((k, k, 5, 6)).astype(np.float32)

    y, pullback = jax.vjp(lambda a, b: kernels.conv2d(a, b, padding), x, w)
    expected = _numpy_conv(x, w, padding)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw = pullback(g)
    rx, rw = jax.vjp(lambda a, b: _xla_conv(a, b, padding), x, w)[1](g)
    for got, want in ((dx, rx), (dw, rw)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5), (7, 7), (9, 8)])
def test_fc6_with_pooling_folded_in_matches_torch(hw):
    """fc6 after adaptive pooling to 7x7 (folded into the kernel on a 1x1 map) equals
    torchvision's adaptive_avg_pool2d, flatten and Linear, with the input and weight gradients."""
    rng = np.random.default_rng(sum(hw))
    x = rng.standard_normal((3, *hw, 4)).astype(np.float32)
    kernel = rng.standard_normal((7, 7, 4, 5)).astype(np.float32)
    g = rng.standard_normal((3, 1, 1, 5)).astype(np.float32)
    conv = kernels.Conv(5, 7, kernels="auto")
    variables = {"params": {"kernel": kernel, "bias": np.zeros(5, np.float32)}}
    y, pullback = jax.vjp(
        lambda a, k: conv.apply(
            {"params": {"kernel": k, "bias": variables["params"]["bias"]}}, a, pool_to=(7, 7)
        ),
        x,
        kernel,
    )
    dx, dk = pullback(g)

    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    # torchvision's fc6 weight is (out, c * 7 * 7) in (c, h, w) order; ours is HWIO.
    wt = torch.from_numpy(kernel.transpose(3, 2, 0, 1).reshape(5, -1)).requires_grad_()
    pooled = torch.nn.functional.adaptive_avg_pool2d(xt, (7, 7)).flatten(1)
    yt = pooled @ wt.T
    yt.backward(torch.from_numpy(g.reshape(3, 5)))
    want_dk = wt.grad.numpy().reshape(5, 4, 7, 7).transpose(2, 3, 1, 0)
    for got, want in (
        (np.asarray(y).reshape(3, 5), yt.detach().numpy()),
        (dx, xt.grad.permute(0, 2, 3, 1).numpy()),
        (dk, want_dk),
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 9, 7, 2)])
def test_max_pool_matches_reduce_window_and_torch_including_ties(shape):
    rng = np.random.default_rng(0)
    # Small integers make ties common; the gradient must go to the first maximum only.
    x = rng.integers(-2, 3, shape).astype(np.float32)
    g = rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(np.float32)

    y, pullback = jax.vjp(kernels.max_pool_2x2, x)
    ry, ref_pullback = jax.vjp(lambda a: nn.max_pool(a, (2, 2), strides=(2, 2)), x)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(pullback(g)[0], ref_pullback(g)[0])

    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 2)
    yt.backward(torch.from_numpy(g).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(y, yt.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(pullback(g)[0], xt.grad.permute(0, 2, 3, 1).numpy())


def test_model_logits_and_gradients_match_torchvision():
    """A narrow vgg11 with random weights: logits and every parameter's gradient equal
    torchvision's (the full-width nets' gradients are tests/test_parity.py's)."""
    torch.manual_seed(0)
    net = torch_model("vgg11", seed=0, width=0.25, head_width=64)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([3, 7])
    logits = net(images)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    logits_t = logits.detach().numpy()
    grads_t = {k: p.grad.numpy() for k, p in net.named_parameters()}

    variables = flax_layout(net.state_dict(), "vgg11", jnp.float32)
    model = vgg_flax.create_model("vgg11", width=0.25, head_width=64)
    x = jnp.asarray(images.permute(0, 2, 3, 1).numpy())

    def loss_fn(params):
        logits = model.apply({"params": params}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, labels.numpy()
        ).mean(), logits

    # Jitted: one compile, not an eager dispatch of each op of the gradient.
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss_j, logits_j), grads = value_and_grad(variables["params"])
    scale = np.abs(logits_t).max()
    np.testing.assert_allclose(logits_j, logits_t, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(loss_j, loss.item(), rtol=1e-5)
    grads_j = dict(torch_layout({"params": grads}, "vgg11"))
    assert grads_j.keys() == grads_t.keys()
    for key, want in grads_t.items():
        got = grads_j[key]
        np.testing.assert_allclose(
            got, want, rtol=1e-4, atol=2e-5 * np.abs(want).max(), err_msg=key
        )


def test_compiler_options_are_accepted_by_this_backend():
    options = compiler_options()
    if jax.default_backend() == "cpu":
        assert options == {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    assert compiler_options("gpu") == {}
    compiled = jax.jit(lambda x: x * 2, compiler_options=options).lower(jnp.ones(3)).compile()
    np.testing.assert_array_equal(compiled(jnp.ones(3)), 2 * np.ones(3))
