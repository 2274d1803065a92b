"""DISTS (Ding, Ma, Wang & Simoncelli, TPAMI 2020), exact to `dists-pytorch` and `piq.DISTS`.

Inputs are NHWC RGB images in [0, 1] (at least 32x32). The trunk is a VGG-16 whose poolings are
L2 poolings (`pooling="l2"`: `vgg_flax.models.ops.l2_pool`, a 3x3 Hann window with stride 2 on
the squared map; any trunk given is switched to it). Its stages are the image itself and
relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the normalised image (the trunk's preprocessing:
ImageNet's mean and std for torchvision's weights). For every channel of every stage, with
means, variances and the covariance over space:

    structure S1 = (2 mu_x mu_y + c) / (mu_x^2 + mu_y^2 + c)
    texture   S2 = (2 cov_xy + c) / (var_x + var_y + c)           c = 1e-6

and the distance is `1 - sum(alpha * S1 + beta * S2)`, with the learned alpha and beta (1,475
channels each, `vgg_flax.perceptual.dists_weights`) divided by their joint sum, as the authors'
code does. The trunk gets no gradient; images do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vgg_flax.models.arch import NETWORK_STRIDE
from vgg_flax.models.vgg import VGG
from vgg_flax.perceptual import frozen
from vgg_flax.perceptual.dists_weights import STAGE_CHANNELS, load_weights
from vgg_flax.perceptual.lpips import TAPS, tap_channels
from vgg_flax.preprocessing import PRESETS, Preset, preprocess

C1 = C2 = 1e-6  # the authors' stabilising constants


@struct.dataclass
class DISTS:
    """The DISTS metric with its trunk and weights; a pytree, so it can be passed through `jit`.

    Call it as `metric(x, y)`: NHWC images in [0, 1] of equal size (batches of equal size, or
    one of size 1 to broadcast). Returns the distance per pair, shape (N,). `load_dists` builds
    the published metric; built directly, any trunk with `pooling="l2"` and one alpha and beta
    per channel of its stages serves (e.g. a narrow one, for tests or for training new weights).
    """

    variables: Any
    alpha: jax.Array
    beta: jax.Array
    model: VGG = struct.field(pytree_node=False)
    preprocessing: Preset = struct.field(pytree_node=False, default=PRESETS["torchvision"])
    dtype: Any = struct.field(pytree_node=False, default=None)
    remat: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """The DISTS distance between `x` and `y`; see the class docstring."""
        return _dists(self, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))


def load_dists(
    *,
    trunk: str | os.PathLike | Mapping[str, Any] | frozen.Trunk | None = None,
    weights: str | os.PathLike | Mapping[str, Any] | None = None,
    cache: str | os.PathLike | None = None,
    dtype: Any = None,
    remat: bool = False,
) -> DISTS:
    """The DISTS metric.

    `trunk`: torchvision's vgg16 weights by default (`vgg_flax.pretrained`), a registry name,
    any source `vgg_flax.load` takes, what it returns, or a `(model, variables)` pair; its usage
    record sets the input preprocessing; its poolings become L2 poolings. `weights`: an
    alpha/beta file or state dict; by default the published file
    (`vgg_flax.perceptual.dists_weights.find_weights`). `dtype` (e.g. jnp.bfloat16) is the
    trunk's compute dtype; the statistics stay float32. `remat` recomputes the trunk in the
    backward pass to save memory.
    """
    alpha, beta = load_weights(weights, cache=cache)
    model, variables, usage = frozen.resolve_trunk(trunk, "vgg16")
    frozen.check_taps(model, TAPS)
    model = model.clone(pooling="l2")
    channels = tap_channels(model, variables)
    if channels != STAGE_CHANNELS[1:]:
        raise ValueError(
            f"the trunk's {', '.join(TAPS)} have {channels} channels but DISTS's alpha and beta "
            f"weigh {STAGE_CHANNELS[1:]}: DISTS needs a full-width VGG-16 (D) trunk"
        )
    return DISTS(
        variables, jnp.asarray(alpha), jnp.asarray(beta), model, usage.preprocessing, dtype, remat
    )


def _similarities(fx: jax.Array, fy: jax.Array) -> tuple[jax.Array, jax.Array]:
    # (N, C) structure and texture terms of two NHWC stages, written as the authors' code.
    x_mean, y_mean = jnp.mean(fx, axis=(1, 2)), jnp.mean(fy, axis=(1, 2))
    structure = (2 * x_mean * y_mean + C1) / (x_mean**2 + y_mean**2 + C1)
    x_var = jnp.mean((fx - x_mean[:, None, None]) ** 2, axis=(1, 2))
    y_var = jnp.mean((fy - y_mean[:, None, None]) ** 2, axis=(1, 2))
    covariance = jnp.mean(fx * fy, axis=(1, 2)) - x_mean * y_mean
    texture = (2 * covariance + C2) / (x_var + y_var + C2)
    return structure, texture


@jax.jit
def _dists(metric: DISTS, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[1:] != y.shape[1:] or x.shape[-1] != 3:
        raise ValueError(
            f"DISTS takes two NHWC batches of RGB images of one size, got {x.shape} and {y.shape}"
        )
    if min(x.shape[1:3]) < NETWORK_STRIDE:  # the smallest side the trunk's five poolings take
        raise ValueError(
            f"DISTS needs images of at least {NETWORK_STRIDE}x{NETWORK_STRIDE} (the trunk's five "
            f"poolings), got {x.shape[1]}x{x.shape[2]}; resize them"
        )

    def stages(images: jax.Array) -> list[jax.Array]:
        found = frozen.activations(
            metric.model,
            metric.variables,
            preprocess(images, metric.preprocessing),
            TAPS,
            dtype=metric.dtype,
            remat=metric.remat,
        )
        return [found[name] for name in TAPS]

    if x.shape == y.shape:  # one trunk run over both batches
        pairs = [jnp.split(f, 2) for f in stages(jnp.concatenate([x, y]))]
    else:
        pairs = list(zip(stages(x), stages(y), strict=True))
    pairs.insert(0, (x, y))
    channels = [fx.shape[-1] for fx, _ in pairs]  # STAGE_CHANNELS for a full-width VGG-16
    if metric.alpha.shape != (sum(channels),) or metric.beta.shape != (sum(channels),):
        raise ValueError(
            f"alpha and beta have shapes {metric.alpha.shape} and {metric.beta.shape}, but the "
            f"stages have {channels} channels: give one weight per channel"
        )
    total = metric.alpha.sum() + metric.beta.sum()
    bounds = np.cumsum(channels)[:-1]
    alphas = jnp.split(metric.alpha / total, bounds)
    betas = jnp.split(metric.beta / total, bounds)
    structure = texture = 0.0
    for (fx, fy), alpha, beta in zip(pairs, alphas, betas, strict=True):
        s1, s2 = _similarities(fx, fy)
        structure = structure + jnp.sum(alpha * s1, axis=-1)
        texture = texture + jnp.sum(beta * s2, axis=-1)
    return 1 - (structure + texture)
