"""A VGG frozen inside another model: named activations whose parameters never get a gradient.

The shared core of `vgg_flax.perceptual.lpips` and `vgg_flax.perceptual.losses`. Images arrive
already normalised
(float32); the trunk runs in `dtype` (e.g. bfloat16) and its activations come back in float32, so
everything computed from them afterwards (unit normalisation, Gram matrices, distances) is
float32. `remat=True` wraps the trunk in `jax.checkpoint`: its activations are recomputed in the
backward pass instead of being kept alive from the forward pass, which is what holds memory when
the loss sits inside a large training step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from vgg_flax.models.arch import activation_names
from vgg_flax.models.vgg import VGG

Variables = Mapping[str, Any]
Trunk = tuple[VGG, Variables]


def resolve_trunk(
    trunk: str | os.PathLike | Mapping[str, Any] | Trunk | None, default: str, head: str = "drop"
) -> Trunk:
    """`(model, variables)` for a trunk given as any of vgg-flax's weight sources.

    None: torchvision's `default` weights (`vgg_flax.pretrained`); a key of
    `vgg_flax.weights.registry.TORCHVISION_WEIGHTS` (e.g. "vgg19"); a checkpoint directory, `.pth`
    file
    or state dict (`vgg_flax.load`); or a `(model, variables)` pair, used as it is.
    """
    from vgg_flax.weights import registry as weights
    from vgg_flax.weights.download import pretrained
    from vgg_flax.weights.loading import load

    if isinstance(trunk, tuple):
        model, variables = trunk
        if not isinstance(model, VGG):
            raise TypeError(f"a trunk pair must be (VGG, variables), got {type(model).__name__}")
        return model, variables
    if trunk is None:
        trunk = default
    if isinstance(trunk, str) and trunk in weights.TORCHVISION_WEIGHTS:
        return pretrained(trunk, head=head)
    return load(trunk, head=head)


def check_taps(model: VGG, taps: Sequence[str]) -> None:
    """Refuse tap names the trunk does not have, listing those it has."""
    known = activation_names(model.arch, model.batch_norm)
    unknown = [name for name in taps if name not in known]
    if unknown:
        raise ValueError(
            f"the trunk has no activations named {unknown}; it has {', '.join(known)} (convN_M "
            "is before its ReLU, reluN_M after)"
        )


def activations(
    model: VGG,
    variables: Variables,
    images: jax.Array,
    taps: Sequence[str],
    *,
    dtype: Any = None,
    remat: bool = False,
) -> dict[str, jax.Array]:
    """The float32 activations `taps` of normalised NHWC `images`; no gradient reaches `variables`.

    `dtype` is the trunk's compute dtype (default: the model's own); `remat` recomputes the
    trunk in the backward pass (see the module docstring).
    """
    if dtype is not None:
        model = model.clone(dtype=dtype)
    taps = tuple(dict.fromkeys(taps))  # one run serves repeated names

    def run(variables: Variables, images: jax.Array) -> dict[str, jax.Array]:
        out = model.apply(jax.lax.stop_gradient(variables), images, features=taps)
        return {name: value.astype(jnp.float32) for name, value in out.items()}

    if remat:
        run = jax.checkpoint(run)
    return run(variables, images)


def normalise(
    images: jax.Array, shift: Sequence[float], scale: Sequence[float], pixel_scale: float = 1.0
) -> jax.Array:
    """`(images * pixel_scale - shift) / scale` per RGB channel (last axis), in float32."""
    images = jnp.asarray(images, jnp.float32) * pixel_scale
    return (images - jnp.asarray(shift, jnp.float32)) / jnp.asarray(scale, jnp.float32)
