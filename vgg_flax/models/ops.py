"""VGG's convolutions and poolings: standard `lax` ops, with faster CPU formulations chosen inside.

Measured on XLA:CPU (benchmarks/BENCHMARKS.md): a 7x7 "convolution" over a 7x7 map is ~3x slower
than the same contraction as one matrix product, forward and backward; the kernel gradient of a
3x3 convolution as autodiff builds it is several times slower than im2col products taken one
output row at a time; the backward of `reduce_window` max pooling (select-and-scatter) is ~7x
slower than routing the gradient through an explicit 2x2 mask; and a convolution on a map with a
side of 1 or 2 (conv5 of a 32x32 input) is ~80x slower than its im2col product. Each op here is
a `custom_vjp` whose forward and backward pick, with `lax.platform_dependent`, the CPU
formulation on CPUs and the standard `lax` op on every other platform (a program lowered for a
GPU or TPU holds only the standard ops). Both compute the same sums; `max_pool_2x2` sends each
window's gradient to its first maximum on every platform, as PyTorch does. `KERNELS = ("auto",
"lax")`: "lax" uses the standard ops everywhere.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vgg_flax.models.layers import adaptive_avg_pool, fold_adaptive_pool

KERNELS = ("auto", "lax")


def check_kernels(kernels: str) -> None:
    """Refuse an unknown kernel choice with the known ones."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")


# --- Convolution ------------------------------------------------------------------------------


def plain_conv(x: jax.Array, kernel: jax.Array, padding: int, precision: Any = None) -> jax.Array:
    """Stride-1 convolution of NHWC `x` with an HWIO kernel and symmetric zero `padding`."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


# Maps with a side at most this long go through `_im2col`: XLA:CPU's convolution takes ~80x
# longer than the product on a 2x2 map (batch 32, 512 -> 512 channels: 1.7 s vs 0.02 s), the
# pool4 -> conv5 maps of 32x32 inputs; from 4x4 on the two are even and from 8x8 on XLA's wins.
SMALL_MAP = 2


def _product(a: jax.Array, b: jax.Array, precision: Any) -> jax.Array:
    # Accumulated in at least float32, as PyTorch's bf16 autocast does; XLA:CPU also runs a bf16
    # product with a float32 result about 3x faster than one with a bf16 result.
    total_type = jnp.promote_types(a.dtype, jnp.float32)
    return jnp.dot(a, b, precision=precision, preferred_element_type=total_type).astype(a.dtype)


def _columns(padded: jax.Array, kh: int, kw: int) -> jax.Array:
    """The kh * kw shifted windows of a padded NHWC map side by side in the channels, (i, j, c)
    order, flattened to rows: (N * H' * W', kh * kw * C), H' and W' the valid output size."""
    n, height, width = padded.shape[0], padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    cols = jnp.concatenate(
        [padded[:, i : i + height, j : j + width] for i in range(kh) for j in range(kw)], axis=-1
    )
    return cols.reshape(n * height * width, kh * kw * padded.shape[3])


def _pad(x: jax.Array, padding: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def _im2col(x: jax.Array, kernel: jax.Array, padding: int, precision: Any) -> jax.Array:
    # The columns times the kernel flattened in the same (i, j, c) order: one product with the
    # convolution's sums.
    kh, kw, cin, cout = kernel.shape
    padded = _pad(x, padding)
    height, width = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    out = _product(_columns(padded, kh, kw), kernel.reshape(kh * kw * cin, cout), precision)
    return out.reshape(x.shape[0], height, width, cout)


def _as_matmul(x: jax.Array, kernel: jax.Array, padding: int, precision: Any) -> jax.Array | None:
    # A window that covers the whole (unpadded) map is one matrix product over the flattened
    # (h, w, c) axes, and a 1x1 kernel is one over the channels: the same sums as the
    # convolution, in the layout XLA:CPU's matrix multiply is fastest at; on a small map, the
    # im2col product. None: none of these cases.
    kh, kw, cin, cout = kernel.shape
    n, height, width, _ = x.shape
    if padding == 0 and (kh, kw) == (height, width):
        flat = x.reshape(n, height * width * cin)
        out = _product(flat, kernel.reshape(kh * kw * cin, cout), precision)
        return out.reshape(n, 1, 1, cout)
    if padding == 0 and (kh, kw) == (1, 1):
        flat = x.reshape(n * height * width, cin)
        out = _product(flat, kernel.reshape(cin, cout), precision)
        return out.reshape(n, height, width, cout)
    if min(height, width) <= SMALL_MAP:
        return _im2col(x, kernel, padding, precision)
    return None


def _cpu_conv(x: jax.Array, kernel: jax.Array, padding: int, precision: Any) -> jax.Array:
    out = _as_matmul(x, kernel, padding, precision)
    return plain_conv(x, kernel, padding, precision) if out is None else out


def _kernel_grad(
    x: jax.Array, g: jax.Array, shape: tuple, padding: int, precision: Any, dtype: Any
) -> jax.Array:
    # dW = columns(x)^T g, summed over every output pixel. Autodiff's form of it is a
    # convolution whose "window" is the whole image and whose features are the batch, slow on
    # XLA:CPU, and the columns of a whole 224x224x64 batch are 9 copies of the activation. So
    # one output row of every image at a time: its columns (a few MB, cache-sized) times its
    # rows of g, accumulated in at least float32 (dW of conv1_2 at batch 8: 0.70-0.83 s as 9
    # whole-map products, 0.33-0.51 s by rows; benchmarks/conv_forms.py). The loop runs over
    # rows, never over the batch, so a batch-sharded step keeps its sharding.
    kh, kw, cin, cout = shape
    n, height, width, _ = g.shape
    padded = _pad(x, padding)
    total_type = jnp.promote_types(dtype, jnp.float32)

    def add_row(row: jax.Array, total: jax.Array) -> jax.Array:
        window = lax.dynamic_slice_in_dim(padded, row, kh, axis=1)
        g_row = lax.dynamic_slice_in_dim(g, row, 1, axis=1).reshape(n * width, cout)
        product = lax.dot_general(
            _columns(window, kh, kw),
            g_row,
            (((0,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=total_type,
        )
        return total + product

    total = lax.fori_loop(0, height, add_row, jnp.zeros((kh * kw * cin, cout), total_type))
    return total.reshape(shape).astype(dtype)


def _cpu_conv_vjp(x, kernel, g, padding, precision):
    if _as_matmul(x, kernel, padding, precision) is not None:
        return jax.vjp(lambda a, b: _cpu_conv(a, b, padding, precision), x, kernel)[1](g)
    # The input gradient is the transposed convolution autodiff builds.
    (dx,) = jax.vjp(lambda a: plain_conv(a, kernel, padding, precision), x)[1](g)
    return dx, _kernel_grad(x, g, kernel.shape, padding, precision, kernel.dtype)


def _plain_conv_vjp(x, kernel, g, padding, precision):
    return jax.vjp(lambda a, b: plain_conv(a, b, padding, precision), x, kernel)[1](g)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, padding: int, precision: Any = None) -> jax.Array:
    """`plain_conv`, computed by the CPU formulation on CPUs (forward and backward)."""
    return lax.platform_dependent(
        x,
        kernel,
        cpu=partial(_cpu_conv, padding=padding, precision=precision),
        default=partial(plain_conv, padding=padding, precision=precision),
    )


def _conv2d_fwd(x, kernel, padding, precision):
    return conv2d(x, kernel, padding, precision), (x, kernel)


def _conv2d_bwd(padding, precision, residuals, g):
    x, kernel = residuals
    return lax.platform_dependent(
        x,
        kernel,
        g,
        cpu=partial(_cpu_conv_vjp, padding=padding, precision=precision),
        default=partial(_plain_conv_vjp, padding=padding, precision=precision),
    )


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
    """A stride-1 2D convolution with `nn.Conv`'s variables ("kernel" HWIO, "bias"), NHWC.

    `kernels`: "auto" (the CPU formulation on CPUs, `lax` elsewhere) or "lax" (always `lax`).
    `pool_to` (call argument): adaptive average pooling (PyTorch's) of x to this size first, as
    the classifier does before fc6. With "auto" and a 1x1 map (inputs of 32-63 pixels), the
    pooling would repeat the pixel over the whole window; fc6 of that equals the pixel times the
    kernel summed over the window, the same sums regrouped (float32 rounding), and the product
    shrinks 49-fold, forward and backward.
    `pooled_from` (call argument, (h, w)): the kernel was trained on maps of h x w pooled up to
    its window; it is folded with that pooling (`layers.fold_adaptive_pool`) and slides over x
    as an h x w window (dense evaluation of a net trained below 224).
    """

    features: int
    kernel_size: int
    padding: int = 0
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernels: str = "auto"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        pool_to: tuple[int, int] | None = None,
        pooled_from: tuple[int, int] | None = None,
    ) -> jax.Array:
        """Convolve x (N, H, W, Cin), first pooled adaptively to `pool_to` if given; add bias."""
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        if pooled_from is not None:
            kernel = fold_adaptive_pool(kernel, pooled_from)
        if pool_to is not None:
            if self.kernels == "auto" and x.shape[1:3] == (1, 1) and self.padding == 0:
                # As a product with the pooling weights (all 1 here): XLA:CPU's reduce over the
                # kernel's leading axes took 1.1 s for fc6's, the product 0.02 s.
                kernel = fold_adaptive_pool(kernel, (1, 1))
            else:
                x = adaptive_avg_pool(x, pool_to)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        conv = conv2d if self.kernels == "auto" else plain_conv
        return conv(x, kernel, self.padding, self.precision) + bias


# --- Pooling ----------------------------------------------------------------------------------


def _windows(x: jax.Array) -> jax.Array:
    # (N, H, W, C) -> (N, H/2, 2, W/2, 2, C); an odd last row/column is dropped (floor mode).
    n, height, width, c = x.shape
    even = x[:, : height // 2 * 2, : width // 2 * 2]
    return even.reshape(n, height // 2, 2, width // 2, 2, c)


def plain_max_pool(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 by `lax.reduce_window` (odd edges dropped, as PyTorch)."""
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def _cpu_max_pool(x: jax.Array) -> jax.Array:
    return jnp.max(_windows(x), axis=(2, 4))


def _cpu_max_pool_vjp(x: jax.Array, y: jax.Array, g: jax.Array) -> jax.Array:
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
    return jnp.pad(gx, pad)


def _plain_max_pool_vjp(x: jax.Array, y: jax.Array, g: jax.Array) -> jax.Array:
    return jax.vjp(plain_max_pool, x)[1](g)[0]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """`plain_max_pool`, computed by the CPU formulation on CPUs (forward and backward)."""
    return lax.platform_dependent(x, cpu=_cpu_max_pool, default=plain_max_pool)


def _max_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = max_pool_2x2(x)
    return y, (x, y)


def _max_pool_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = residuals
    return (lax.platform_dependent(x, y, g, cpu=_cpu_max_pool_vjp, default=_plain_max_pool_vjp),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 (odd edges dropped), as style-transfer VGGs use."""
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


def pool_2x2(x: jax.Array, pooling: str, kernels: str = "auto") -> jax.Array:
    """The trunk's 2x2 pooling: `pooling` "max" or "avg"; `kernels` as in `Conv`."""
    if pooling == "avg":
        return avg_pool_2x2(x)
    return max_pool_2x2(x) if kernels == "auto" else plain_max_pool(x)
