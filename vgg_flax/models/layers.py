"""Layers with PyTorch's exact semantics: adaptive average pooling, AlexNet's LRN, BatchNorm."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# AlexNet's LRN as the paper uses it: alpha is not divided by the window size.
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 2.0
# PyTorch's BatchNorm2d defaults (its momentum 0.1 is Flax's 0.9).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) averaging weights of PyTorch's AdaptiveAvgPool along one axis.

    Output i averages inputs floor(i * in / out) up to ceil((i + 1) * in / out), exclusive.
    """
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = math.ceil((i + 1) * in_size / out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jnp.ndarray, output_size: tuple[int, int]) -> jnp.ndarray:
    """PyTorch's `adaptive_avg_pool2d` on an NHWC array, for any input size."""
    height, width = x.shape[1:3]
    if (height, width) == tuple(output_size):
        return x  # every window is one pixel: the identity, exactly
    rows = jnp.asarray(adaptive_pool_matrix(height, output_size[0]), x.dtype)
    cols = jnp.asarray(adaptive_pool_matrix(width, output_size[1]), x.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols, precision="highest")


def fold_adaptive_pool(kernel: jax.Array, in_hw: tuple[int, int]) -> jax.Array:
    """`kernel` (kh, kw, C, D), which sees `adaptive_avg_pool(x, (kh, kw))` of an `in_hw` map,
    folded into an (h, w, C, D) kernel that sees x itself: the same sums, regrouped.

    fc6 of a net trained below 224 is one: its pool5 map of h x w was averaged up to 7x7 first.
    One product of the pooling weights (kh * kw, h * w) with the kernel in its stored layout
    (nothing transposed), accumulated in at least float32; on a 1x1 map every weight is 1 and
    this is the window's sum.
    """
    kh, kw, cin, cout = kernel.shape
    total_type = jnp.promote_types(kernel.dtype, jnp.float32)
    pooling = np.kron(adaptive_pool_matrix(in_hw[0], kh), adaptive_pool_matrix(in_hw[1], kw))
    folded = lax.dot_general(
        jnp.asarray(pooling, total_type),
        kernel.reshape(kh * kw, cin * cout).astype(total_type),
        (((0,), (0,)), ((), ())),
        precision=lax.Precision.HIGHEST,
    )
    return folded.astype(kernel.dtype).reshape(*in_hw, cin, cout)


def local_response_norm(
    x: jnp.ndarray,
    size: int = LRN_SIZE,
    alpha: float = LRN_ALPHA,
    beta: float = LRN_BETA,
    k: float = LRN_K,
) -> jnp.ndarray:
    """AlexNet's LRN across the channels of an NHWC array.

    b_i = a_i / (k + alpha * sum_j a_j^2)^beta over the `size` channels centred on i; alpha is
    not divided by `size` (PyTorch's LocalResponseNorm divides it, so it needs alpha * size).
    """
    squares = jnp.square(x)
    pad = [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)]
    padded = jnp.pad(squares, pad)
    channels = x.shape[-1]
    window_sum = sum(padded[..., j : j + channels] for j in range(size))
    return x / jnp.power(k + alpha * window_sum, beta)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch's BatchNorm2d semantics.

    Normalises with the batch's biased variance when training and updates the running variance
    with the unbiased one, as PyTorch does (Flax's own BatchNorm stores the biased variance).
    Variables: params `scale`, `bias`; batch_stats `mean`, `var`.
    """

    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Normalise x with batch statistics when training, running statistics otherwise."""
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        # Statistics in at least float32 (bf16 would lose them), in float64 for float64 parity runs.
        stats_dtype = jnp.promote_types(jnp.float32, self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stats_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), stats_dtype)
        dtype = self.dtype or x.dtype
        stats_dtype = jnp.promote_types(stats_dtype, x.dtype)
        if train:
            stats_x = x.astype(stats_dtype)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(stats_x, axes)
            var = jnp.mean(jnp.square(stats_x - mean), axes)
            if not self.is_initializing():
                count = math.prod(x.shape[:-1])
                unbiased = var * (count / max(count - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        inv = scale.astype(stats_dtype) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        shift = bias.astype(stats_dtype) - mean * inv
        return (x * inv.astype(dtype) + shift.astype(dtype)).astype(dtype)
