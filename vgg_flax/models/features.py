"""A feature pyramid of the conv trunk, as timm's `features_only=True` gives for VGG.

The five stages are the activations just before each 2x2 pooling (relu1_2 .. relu5_3 for VGG-D;
norm1 for A-LRN's first block): timm's convention for VGG, at reductions 1, 2, 4, 8, 16 of the
input, with the channels of each block's last conv. Dense prediction heads (FPN, U-Net, SSD)
take these full-resolution maps and pool them themselves. The activations come from the model's
own `features=` mechanism, so the network stops after the last stage asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from vgg_flax.models import arch as arch_lib


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One pyramid stage: the activation's name, its channels and its stride (reduction)."""

    name: str
    channels: int
    reduction: int


def feature_info(model: Any) -> tuple[FeatureInfo, ...]:
    """The five stages of `model` (a `VGG`): the activation before each pooling, in order."""
    names = arch_lib.activation_names(model.arch, model.batch_norm)
    stages, channels, reduction = [], 0, 1
    for layer in arch_lib.layers(model.arch, model.width):
        if layer.kind == "conv":
            channels = layer.features
        elif layer.kind == "pool":
            before = names[names.index(layer.name) - 1]
            stages.append(FeatureInfo(before, channels, reduction))
            reduction *= 2
    return tuple(stages)


def feature_pyramid(
    model: Any,
    variables: Mapping[str, Any],
    images: Any,
    *,
    stages: Sequence[int] = (0, 1, 2, 3, 4),
) -> list[Any]:
    """The activations of the pyramid `stages` (indices into `feature_info(model)`), NHWC.

    Stage i has `feature_info(model)[i].channels` channels and 1 / 2**i of the input's
    height and width (rounded down as the poolings do). BatchNorm runs in evaluation mode; for
    training, ask `model.apply(..., features=[s.name for s in feature_info(model)])` directly.
    Under `jax.jit`, mark `model` (argument 0) and `stages` (a tuple) static.
    """
    info = feature_info(model)
    bad = [i for i in stages if not 0 <= i < len(info)]
    if bad:
        raise ValueError(f"pyramid stages {bad} out of range; a VGG has stages 0..{len(info) - 1}")
    names = [info[i].name for i in stages]
    found = model.apply(variables, images, features=names)
    return [found[name] for name in names]
