"""Gatys' normalised VGG: every conv filter's mean activation made 1, the network's outputs kept.

Gatys, Ecker & Bethge (CVPR 2016, sec. 2) rescale VGG-19 "by scaling the weights such that the
mean activation of each convolutional filter over images and positions is equal to one". ReLU
and the poolings commute with a positive scale per channel (max and average pooling exactly;
DISTS's L2 pooling up to its 1e-12 under the root), so one pass over the images gives every
filter's mean m (after its ReLU) in the original network, and then

    kernel[..., i, o] *= m_prev[i] / m[o],   bias[o] /= m[o]

makes each activation the original's divided by its m; fc6 takes pool5's channels multiplied
back by the last m, so the logits are unchanged. A filter that is never active on the images
(m = 0) keeps its scale. One that is barely active (m a ten-thousandth of its layer's typical
mean) is scaled up as much, and float32's rounding of its pre-activations with it: its mean on
the images comes out 1 only to about 1e-5 .. 1e-4; use many varied images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vgg_flax.models import arch as arch_lib
from vgg_flax.models.vgg import VGG
from vgg_flax.preprocessing import Preset, preprocess


def conv_names(model: VGG) -> list[str]:
    """The trunk's convolutions in order (conv1_1 ... conv5_4 for VGG-19)."""
    return [
        layer.name for layer in arch_lib.layers(model.arch, model.width) if layer.kind == "conv"
    ]


def mean_activations(
    model: VGG,
    variables: Mapping[str, Any],
    images: Any,
    *,
    preprocessing: str | Preset | None = None,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Each conv's per-filter mean activation after its ReLU, over `images` and positions.

    `images`: NHWC network inputs, or with `preprocessing` RGB in [0, 1] that it normalises
    first. Runs `batch_size` images at a time; means in float64 of float32 activations.
    """
    names = conv_names(model)
    relus = tuple("relu" + name[len("conv") :] for name in names)

    @jax.jit
    def sums(variables: Mapping[str, Any], batch: jax.Array) -> dict[str, jax.Array]:
        x = batch if preprocessing is None else preprocess(batch, preprocessing)
        found = model.apply(variables, x.astype(jnp.float32), features=relus)
        return {name: jnp.sum(found[name].astype(jnp.float32), axis=(0, 1, 2)) for name in relus}

    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise ValueError(f"images must be a non-empty NHWC batch of RGB images, got {images.shape}")
    totals = {name: 0.0 for name in relus}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        for name, value in sums(variables, batch).items():
            totals[name] = totals[name] + np.asarray(value, np.float64)
    positions: dict[str, int] = {}
    shapes = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, *images.shape[1:])), features=relus), variables
    )
    for name in relus:
        positions[name] = len(images) * shapes[name].shape[1] * shapes[name].shape[2]
    return {conv: totals[relu] / positions[relu] for conv, relu in zip(names, relus, strict=True)}


def normalise_activations(
    model: VGG,
    variables: Mapping[str, Any],
    images: Any,
    *,
    preprocessing: str | Preset | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Variables whose every conv filter has mean activation 1 on `images`, with the same logits.

    `images` as `mean_activations` takes them (ideally many varied photos: Gatys used ImageNet's
    validation images). The head (fc6 ... fc8) is kept; fc6's kernel absorbs the last scale.
    Networks with BatchNorm or LRN are refused: the scaling does not pass through them.
    """
    if model.batch_norm or any(layer.kind == "lrn" for layer in arch_lib.layers(model.arch)):
        raise ValueError(
            "normalise_activations needs a plain VGG (no BatchNorm, no LRN): the rescaling "
            "commutes with ReLU and pooling only; use e.g. vgg19, not vgg19_bn"
        )
    means = mean_activations(
        model, variables, images, preprocessing=preprocessing, batch_size=batch_size
    )
    params = jax.tree.map(np.asarray, dict(variables["params"]))
    previous = None
    for name, mean in means.items():
        scale = np.where(mean > 0, mean, 1.0)
        layer = dict(params[name])
        kernel = layer["kernel"].astype(np.float64)
        if previous is not None:
            kernel = kernel * previous[:, None]
        layer["kernel"] = (kernel / scale).astype(layer["kernel"].dtype)
        layer["bias"] = (layer["bias"] / scale).astype(layer["bias"].dtype)
        params[name] = layer
        previous = scale
    if "fc6" in params:  # pool5's channels come back at their original size
        fc6 = dict(params["fc6"])
        kernel = fc6["kernel"].astype(np.float64) * previous[:, None]
        fc6["kernel"] = kernel.astype(fc6["kernel"].dtype)
        params["fc6"] = fc6
    return {**variables, "params": params}
