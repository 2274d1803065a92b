"""Pretrained and saved weights as NNX VGGs: `vgg_flax.load` and `vgg_flax.pretrained`, in NNX.

Every source the Linen loader reads (checkpoints, `.pth`, `.h5`, `.caffemodel`, safetensors,
hub repositories, state dicts, and whatever `vgg_flax.load` learns to read later) comes through
that one loader; this module only turns its `(model, variables, usage)` into an NNX model and
its usage record (`load`, `pretrained`); `vgg_flax.nnx.create_model(..., pretrained=...)` goes
through the same loader for the model alone (`vgg_flax.nnx.model.create_pretrained`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from flax import nnx

from vgg_flax.nnx.model import VGG, from_linen
from vgg_flax.weights.usage import Usage


class Loaded(NamedTuple):
    """What the NNX `load` and `pretrained` return: the NNX model and its usage record."""

    model: VGG
    usage: Usage


def from_loaded(loaded: Any, *, rngs: nnx.Rngs | None = None) -> Loaded:
    """`(model, usage)` in NNX from what `vgg_flax.load` or `vgg_flax.pretrained` returned."""
    model, variables, usage = loaded
    return Loaded(from_linen(model, variables, rngs=rngs), usage)


def load(
    source: str | os.PathLike | Mapping[str, Any],
    arch: str | None = None,
    *,
    rngs: nnx.Rngs | None = None,
    **options: Any,
) -> Loaded:
    """`vgg_flax.load(source, arch, **options)` as an NNX `(model, usage)`; `rngs` for dropout."""
    from vgg_flax.weights.loading import load as load_linen

    return from_loaded(load_linen(source, arch, **options), rngs=rngs)


def pretrained(name: str = "vgg16", *, rngs: nnx.Rngs | None = None, **options: Any) -> Loaded:
    """`vgg_flax.pretrained(name, **options)` as an NNX `(model, usage)`; `rngs` for dropout.

    Fine-tuning with a new number of classes: `pretrained("vgg16", num_classes=10, key=0)`
    (fc8 replaced by a fresh layer drawn from `key`, as `vgg_flax.pretrained` does).
    """
    from vgg_flax.weights.download import pretrained as pretrained_linen

    return from_loaded(pretrained_linen(name, **options), rngs=rngs)
