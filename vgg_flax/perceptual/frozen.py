"""A VGG frozen inside another model: named activations whose parameters never get a gradient.

The shared core of `vgg_flax.perceptual.lpips` and `vgg_flax.perceptual.losses`, which normalise
images with the trunk's usage record (`vgg_flax.preprocessing.preprocess`). Images arrive here
already normalised (float32); the trunk runs in `dtype` (e.g. bfloat16) and its activations come
back in float32, so everything computed from them afterwards (unit normalisation, Gram matrices,
distances) is float32. `remat=True` wraps the trunk in `jax.checkpoint`: its activations are
recomputed in the backward pass instead of being kept alive from the forward pass, which is what
holds memory when the loss sits inside a large training step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from vgg_flax.models.arch import activation_names
from vgg_flax.models.vgg import VGG, architecture

Variables = Mapping[str, Any]
Trunk = tuple[VGG, Variables]


def resolve_trunk(
    trunk: str | os.PathLike | Mapping[str, Any] | Trunk | None, default: str, head: str = "drop"
) -> tuple[VGG, Variables, Any]:
    """`(model, variables, usage)` for a trunk given as any of vgg-flax's weight sources.

    None: the registry's `default` weights (`vgg_flax.pretrained`); a registry name (e.g.
    "vgg19", "vgg16_caffe"); a checkpoint directory, weight file (`.pth`, Keras `.h5`,
    `.caffemodel`) or state dict (`vgg_flax.load`); what `load`/`pretrained` return; or a
    `(model, variables)` pair, taken as torchvision-preprocessed. The usage record says how
    the trunk wants its input (Caffe's for the authors' networks).
    """
    from vgg_flax.weights.download import pretrained
    from vgg_flax.weights.factory import list_pretrained
    from vgg_flax.weights.loading import load
    from vgg_flax.weights.usage import Usage

    if isinstance(trunk, tuple):
        model, variables, *rest = trunk
        if not isinstance(model, VGG) or len(rest) > 1:
            raise TypeError(
                "a trunk tuple must be (VGG, variables) or (VGG, variables, usage), got "
                f"{type(model).__name__} and {len(rest) + 2} items"
            )
        return model, variables, rest[0] if rest else Usage(architecture(model))
    if trunk is None:
        trunk = default
    if isinstance(trunk, str) and trunk in list_pretrained() and not os.path.exists(trunk):
        return tuple(pretrained(trunk, head=head))
    return tuple(load(trunk, head=head))


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
