"""VGG's convolutions and poolings: standard `lax` ops, with faster CPU formulations chosen inside.

Measured on XLA:CPU (benchmarks/BENCHMARKS.md): a 7x7 "convolution" over a 7x7 map is ~3x slower
than the same contraction as one matrix product, forward and backward; the kernel gradient of a
3x3 convolution as autodiff builds it is several times slower than im2col products taken one
output row at a time; the backward of `reduce_window` max pooling (select-and-scatter) is ~7x
slower than routing the gradient through an explicit 2x2 mask; and a convolution on a map with a
side of 1 or 2 (conv5 of a 32x32 input) is ~80x slower than its im2col product. Each op here
picks, with `lax.platform_dependent`, the CPU formulation on CPUs and the standard `lax` op on
every other platform (a program lowered for a GPU or TPU holds only the standard ops), in its
forward pass, its tangents and its backward pass. Both compute the same sums; `max_pool_2x2`
sends each window's gradient (and takes each window's tangent) from its first maximum on every
platform, as PyTorch does. `KERNELS = ("auto", "lax")`: "lax" uses the standard ops everywhere.

Forward-mode autodiff (`jax.jvp`, `jax.jacfwd`, `jax.hessian`, Hessian-vector products) works
through every op with either choice and equals "lax"'s within float32 rounding. Each op is a
`custom_jvp` whose tangent is a `linear_op` primitive: forward mode evaluates (or batches) the
tangent formula, and reverse mode, which transposes it, runs the fast backward itself, so
`jax.grad` compiles to the same program a `custom_vjp` gave (which had no forward mode).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from vgg_flax.models.layers import adaptive_avg_pool, fold_adaptive_pool

KERNELS = ("auto", "lax")


def check_kernels(kernels: str) -> None:
    """Refuse an unknown kernel choice with the known ones."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")


# --- Linear maps with a chosen transpose ------------------------------------------------------


def linear_op(name: str, apply: Callable, transpose: Callable, num_residuals: int) -> Callable:
    """`apply(*residuals, *linear, **params)`, linear in the arguments after the first
    `num_residuals`, as a JAX primitive whose transpose is `transpose(*residuals, ct, **params)`
    (a tuple: the cotangent of each linear argument).

    An op's custom_jvp rule returns this of its tangents: forward mode evaluates `apply` (and
    batches or differentiates it again as any function), reverse mode transposes the tangent
    map and so runs `transpose`, the fast backward. (A `custom_vjp` has no forward mode, and
    autodiff's transpose of a plain formula is the slow backward.) Cotangents of linear
    arguments the caller does not need are dropped, and compiled programs drop their work.
    """
    primitive = Primitive(name)
    primitive.def_impl(apply)

    def abstract(*avals, **params):
        out = jax.eval_shape(partial(apply, **params), *avals)
        return jax.core.ShapedArray(out.shape, out.dtype)

    def jvp(primals, tangents, **params):
        tangents = [ad.instantiate_zeros(t) for t in tangents]
        return jax.jvp(partial(apply, **params), tuple(primals), tuple(tangents))

    def transposed(ct, *args, **params):
        residuals, linear = args[:num_residuals], args[num_residuals:]
        if type(ct) is ad.Zero:
            return [None] * len(args)
        cts = transpose(*residuals, ct, **params)
        return [None] * num_residuals + [
            c if ad.is_undefined_primal(a) else None for a, c in zip(linear, cts, strict=True)
        ]

    def batched(args, dims, **params):
        return jax.vmap(partial(apply, **params), in_axes=tuple(dims))(*args), 0

    primitive.def_abstract_eval(abstract)
    mlir.register_lowering(primitive, mlir.lower_fun(apply, multiple_results=False))
    ad.primitive_jvps[primitive] = jvp
    ad.primitive_transposes[primitive] = transposed
    batching.primitive_batchers[primitive] = batched
    return primitive.bind


def _is_zero(tangent: Any) -> bool:
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


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


def _bilinear_tangent(conv, x, kernel, *tangents, padding, precision, wrt):
    # The convolution is bilinear: its tangent is the same convolution of each tangent. A
    # symbolically zero tangent (an input that is data, not a variable) adds no term: half the
    # work of a jvp in the input alone, and jit(jacfwd) of VGG-A with avg pooling returned
    # garbage (~1e23) when the zero-kernel term was computed, correct with YNNPACK off
    # (--xla_cpu_experimental_ynn_fusion_type=), an XLA:CPU fusion fault (JAX 0.10.2).
    terms = dict(zip(wrt, tangents, strict=True))
    out = conv(terms["x"], kernel, padding, precision) if "x" in terms else 0
    return out + conv(x, terms["kernel"], padding, precision) if "kernel" in terms else out


def _conv_tangent_apply(x, kernel, *tangents, padding, precision, wrt):
    options = dict(padding=padding, precision=precision, wrt=wrt)
    return lax.platform_dependent(
        x,
        kernel,
        *tangents,
        cpu=partial(_bilinear_tangent, _cpu_conv, **options),
        default=partial(_bilinear_tangent, plain_conv, **options),
    )


def _conv_tangent_transpose(x, kernel, g, *, padding, precision, wrt):
    # Both cotangents, as the CPU backward forms them together; a compiled program drops the
    # one not asked for.
    dx, dkernel = lax.platform_dependent(
        x,
        kernel,
        g,
        cpu=partial(_cpu_conv_vjp, padding=padding, precision=precision),
        default=partial(_plain_conv_vjp, padding=padding, precision=precision),
    )
    return tuple({"x": dx, "kernel": dkernel}[name] for name in wrt)


_conv_tangent = linear_op(
    "vgg_conv2d_tangent", _conv_tangent_apply, _conv_tangent_transpose, num_residuals=2
)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, padding: int, precision: Any = None) -> jax.Array:
    """`plain_conv`, computed by the CPU formulation on CPUs (forward, tangents and backward)."""
    return lax.platform_dependent(
        x,
        kernel,
        cpu=partial(_cpu_conv, padding=padding, precision=precision),
        default=partial(plain_conv, padding=padding, precision=precision),
    )


def _conv2d_jvp(padding, precision, primals, tangents):
    x, kernel = primals
    present = [
        (name, t) for name, t in zip(("x", "kernel"), tangents, strict=True) if not _is_zero(t)
    ]
    wrt, given = tuple(name for name, _ in present), [t for _, t in present]
    y = conv2d(x, kernel, padding, precision)
    dy = _conv_tangent(x, kernel, *given, padding=padding, precision=precision, wrt=wrt)
    return y, dy


conv2d.defjvp(_conv2d_jvp, symbolic_zeros=True)


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


def _first_maxima(x: jax.Array, y: jax.Array) -> list[tuple[int, int, jax.Array]]:
    # Each window's first maximum in row-major window order (ties split nothing, as PyTorch):
    # (i, j, mask over the output) for the window's four positions, one True per window.
    hit = _windows(x) == y[:, :, None, :, None]
    taken = jnp.zeros_like(hit[:, :, 0, :, 0])
    firsts = []
    for i in range(2):
        for j in range(2):
            first = hit[:, :, i, :, j] & ~taken
            taken = taken | first
            firsts.append((i, j, first))
    return firsts


def _cpu_max_pool_vjp(x: jax.Array, y: jax.Array, g: jax.Array) -> jax.Array:
    n, height, width, c = x.shape
    parts = [jnp.where(first, g, jnp.zeros_like(g)) for _, _, first in _first_maxima(x, y)]
    rows = [jnp.stack(parts[2 * i : 2 * i + 2], axis=3) for i in range(2)]
    gx = jnp.stack(rows, axis=2).reshape(n, height // 2 * 2, width // 2 * 2, c)
    pad = ((0, 0), (0, height - gx.shape[1]), (0, width - gx.shape[2]), (0, 0))
    return jnp.pad(gx, pad)


def _cpu_max_pool_tangent(x: jax.Array, y: jax.Array, dx: jax.Array) -> jax.Array:
    # The transpose of `_cpu_max_pool_vjp`: each window's tangent at its first maximum.
    windows = _windows(dx)
    out = jnp.zeros_like(y)
    for i, j, first in _first_maxima(x, y):
        out = jnp.where(first, windows[:, :, i, :, j], out)
    return out


def _plain_max_pool_vjp(x: jax.Array, y: jax.Array, g: jax.Array) -> jax.Array:
    return jax.vjp(plain_max_pool, x)[1](g)[0]


def _plain_max_pool_tangent(x: jax.Array, y: jax.Array, dx: jax.Array) -> jax.Array:
    return jax.jvp(plain_max_pool, (x,), (dx,))[1]


def _max_pool_tangent_apply(x: jax.Array, y: jax.Array, dx: jax.Array) -> jax.Array:
    return lax.platform_dependent(
        x, y, dx, cpu=_cpu_max_pool_tangent, default=_plain_max_pool_tangent
    )


def _max_pool_tangent_transpose(x: jax.Array, y: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (lax.platform_dependent(x, y, g, cpu=_cpu_max_pool_vjp, default=_plain_max_pool_vjp),)


_max_pool_tangent = linear_op(
    "vgg_max_pool_2x2_tangent",
    _max_pool_tangent_apply,
    _max_pool_tangent_transpose,
    num_residuals=2,
)


@jax.custom_jvp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """`plain_max_pool`, computed by the CPU formulation on CPUs (forward, tangents, backward)."""
    return lax.platform_dependent(x, cpu=_cpu_max_pool, default=plain_max_pool)


@max_pool_2x2.defjvp
def _max_pool_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = max_pool_2x2(x)
    return y, _max_pool_tangent(x, y, dx)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 (odd edges dropped), as style-transfer VGGs use."""
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


# np.hanning(5)[1:-1] / its sum, the 3x3 Hann window of DISTS's L2 pooling, separable.
_HANN_3 = (0.25, 0.5, 0.25)
L2_POOL_EPS = 1e-12  # added under the square root, as the DISTS code


def l2_pool(x: jax.Array) -> jax.Array:
    """DISTS's L2 pooling: sqrt(Hann-weighted 3x3 sum of x^2 + 1e-12), stride 2, padding 1.

    The output is (H - 1) // 2 + 1 by (W - 1) // 2 + 1 (an odd edge is kept, unlike the 2x2
    poolings). The window is separable, so the sum is two strided 3-tap sums (the same sums as
    the reference's depthwise convolution, in another order).
    """
    n, height, width, c = x.shape
    rows, cols = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    squared = jnp.pad(x * x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    squared = sum(w * squared[:, i : i + 2 * rows - 1 : 2] for i, w in enumerate(_HANN_3))
    squared = sum(w * squared[:, :, i : i + 2 * cols - 1 : 2] for i, w in enumerate(_HANN_3))
    return jnp.sqrt(squared + L2_POOL_EPS)


def pooled_size(size: int, pooling: str) -> int:
    """A side of `size` after one pooling of kind `pooling` (floor halving, but "l2" rounds up)."""
    return (size - 1) // 2 + 1 if pooling == "l2" else size // 2


def pool_2x2(x: jax.Array, pooling: str, kernels: str = "auto") -> jax.Array:
    """The trunk's pooling: `pooling` "max", "avg" or "l2" (`l2_pool`); `kernels` as in `Conv`."""
    if pooling == "avg":
        return avg_pool_2x2(x)
    if pooling == "l2":
        return l2_pool(x)
    return max_pool_2x2(x) if kernels == "auto" else plain_max_pool(x)
