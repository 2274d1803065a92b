"""Faster formulations of VGG's convolutions and pooling, with the same numbers and parameters.

Measured on XLA:CPU (benchmarks/BENCHMARKS.md): a 7x7 "convolution" over a 7x7 map is ~3x
slower than the same contraction as one matrix product, forward and backward, and the backward of
`reduce_window` max pooling (select-and-scatter) is ~7x slower than routing the gradient through
an explicit 2x2 mask. Both rewrites compute the same sums as the plain operations: `Conv` keeps
`nn.Conv`'s parameter names and shapes (kernel HWIO, bias), and `max_pool_2x2` sends each
window's gradient to its first maximum, as `nn.max_pool` and PyTorch do.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

Initializer = Callable[..., jax.Array]


def conv2d(x: jax.Array, kernel: jax.Array, padding: int, precision: Any = None) -> jax.Array:
    """Stride-1 convolution of NHWC `x` with an HWIO kernel and symmetric zero `padding`.

    A window that covers the whole (unpadded) map is one matrix product over the flattened
    (h, w, c) axes, and a 1x1 kernel is one over the channels: the same sums as the convolution,
    in the layout XLA's matrix multiply is fastest at.
    """
    kh, kw, cin, cout = kernel.shape
    n, height, width, _ = x.shape
    if padding == 0 and (kh, kw) == (height, width):
        flat = x.reshape(n, height * width * cin)
        out = jnp.dot(flat, kernel.reshape(kh * kw * cin, cout), precision=precision)
        return out.reshape(n, 1, 1, cout)
    if padding == 0 and (kh, kw) == (1, 1):
        flat = x.reshape(n * height * width, cin)
        out = jnp.dot(flat, kernel.reshape(cin, cout), precision=precision)
        return out.reshape(n, height, width, cout)
    return _windowed_conv(x, kernel, padding, precision)


def _plain_conv(x: jax.Array, kernel: jax.Array, padding: int, precision: Any) -> jax.Array:
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _windowed_conv(x: jax.Array, kernel: jax.Array, padding: int, precision: Any) -> jax.Array:
    return _plain_conv(x, kernel, padding, precision)


def _windowed_conv_fwd(x, kernel, padding, precision):
    return _plain_conv(x, kernel, padding, precision), (x, kernel)


def _windowed_conv_bwd(padding, precision, residuals, g):
    x, kernel = residuals
    # The input gradient is the transposed convolution autodiff builds, on every platform.
    _, pullback = jax.vjp(lambda x_: _plain_conv(x_, kernel, padding, precision), x)
    (dx,) = pullback(g)

    def autodiff_dkernel(x, g):
        _, pullback = jax.vjp(lambda k: _plain_conv(x, k, padding, precision), kernel)
        return pullback(g)[0]

    def taps_dkernel(x, g):
        return _tap_dkernel(x, g, kernel.shape, padding, precision).astype(kernel.dtype)

    # GPUs have fast kernel-gradient convolutions (cuDNN); XLA:CPU's is slow, so CPUs use taps.
    dkernel = lax.platform_dependent(x, g, cpu=taps_dkernel, default=autodiff_dkernel)
    return dx, dkernel


def _tap_dkernel(x, g, shape, padding, precision):
    # The kernel gradient as autodiff builds it is a convolution whose "window" is the whole
    # image and whose features are the batch, up to 4x slower on XLA:CPU than one matrix product
    # per kernel tap: dW[i, j] = sum over (n, h, w) of shifted x (.., cin) times g (.., cout).
    kh, kw, cin, cout = shape
    n, height, width, _ = g.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = g.reshape(n * height * width, cout)
    taps = [
        lax.dot_general(
            padded[:, i : i + height, j : j + width, :].reshape(n * height * width, cin),
            rows,
            (((0,), (0,)), ((), ())),
            precision=precision,
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(taps).reshape(shape)


_windowed_conv.defvjp(_windowed_conv_fwd, _windowed_conv_bwd)


class Conv(nn.Module):
    """A stride-1 2D convolution with `nn.Conv`'s variables ("kernel" HWIO, "bias"), NHWC."""

    features: int
    kernel_size: int
    padding: int = 0
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolve x (N, H, W, Cin) and add the bias; see `conv2d` for the formulation."""
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv2d(x, kernel, self.padding, self.precision) + bias


def _windows(x: jax.Array) -> jax.Array:
    # (N, H, W, C) -> (N, H/2, 2, W/2, 2, C); an odd last row/column is dropped (floor mode).
    n, height, width, c = x.shape
    even = x[:, : height // 2 * 2, : width // 2 * 2]
    return even.reshape(n, height // 2, 2, width // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 of an NHWC array (VALID: odd edges dropped, as PyTorch)."""
    return jnp.max(_windows(x), axis=(2, 4))


def _max_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = max_pool_2x2(x)
    return y, (x, y)


def _max_pool_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = residuals
    n, height, width, c = x.shape
    hit = _windows(x) == y[:, :, None, :, None]
    # Only the first maximum in row-major window order gets the gradient (ties split nothing).
    taken = jnp.zeros_like(hit[:, :, 0, :, 0])
    rows = []
    for i in range(2):
        cols = []
        for j in range(2):
            first = hit[:, :, i, :, j] & ~taken
            taken = taken | first
            cols.append(jnp.where(first, g, jnp.zeros_like(g)))
        rows.append(jnp.stack(cols, axis=3))
    gx = jnp.stack(rows, axis=2).reshape(n, height // 2 * 2, width // 2 * 2, c)
    pad = ((0, 0), (0, height - gx.shape[1]), (0, width - gx.shape[2]), (0, 0))
    return (jnp.pad(gx, pad),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)
