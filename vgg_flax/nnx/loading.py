"""Pretrained and saved weights as NNX VGGs: `vgg_flax.load` and `vgg_flax.pretrained`, in NNX.

Every source the Linen loader reads (checkpoints, `.pth`, `.h5`, `.caffemodel`, safetensors,
hub repositories, state dicts, and whatever `vgg_flax.load` learns to read later) comes through
that one loader; this module only turns its `(model, variables, usage)` into an NNX model and
its usage record (`load`, `pretrained`), or into the model alone (`create_pretrained`, which
serves `vgg_flax.nnx.create_model(..., pretrained=...)`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from flax import nnx

from vgg_flax.models import arch as arch_lib
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


def create_pretrained(
    arch: str | Sequence[int | str] | None,
    pretrained: Any,
    *,
    rngs: nnx.Rngs,
    batch_norm: bool = False,
    num_classes: int | None = None,
    **options: Any,
) -> VGG:
    """`vgg_flax.nnx.create_model(arch, pretrained=..., ...)`: the NNX VGG of those weights.

    True: torchvision's weights of `arch` (default "D"); a weights name or hub repository:
    `vgg_flax.pretrained`'s; a path: `vgg_flax.load`'s. A fresh fc8 (for another
    `num_classes`) is drawn from the "params" stream of `rngs`; the model keeps `rngs` for
    dropout. `arch` and `batch_norm` are checked against the weights.
    """
    from vgg_flax.weights import download
    from vgg_flax.weights.factory import weights_name
    from vgg_flax.weights.loading import load as load_linen

    if pretrained is True:
        if not isinstance(arch, str | None):
            raise ValueError(
                "pretrained=True picks torchvision's weights of a named architecture ('vgg16', "
                "'D'); a layer list has none: pass pretrained=NAME or a path, or no pretrained="
            )
        source = weights_name(arch or "D", batch_norm)
    elif isinstance(pretrained, str | os.PathLike):
        source = pretrained
    else:
        raise TypeError(
            "pretrained must be True, a weights name ('vgg16_bn'), a hub repository "
            f"('timm/vgg16_bn.tv_in1k') or a path, got {type(pretrained).__name__}"
        )
    key = rngs.params()
    if isinstance(source, os.PathLike) or os.path.exists(source):
        # vgg_flax.pretrained's rules for a file: its tensors fix the widths; a fresh fc8 for
        # another num_classes, drawn as vgg_flax.pretrained draws it.
        fixed = [field for field in download._FIXED_BY_WEIGHTS if field in options]
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)} cannot be set with pretrained weights (their tensors fix "
                "them); drop the option, or build an untrained model without pretrained="
            )
        head = options.pop("head", "auto")
        model, variables, usage = load_linen(source, head=head)
        loaded = download._adapted(model, variables, usage, num_classes, key, options)
    else:
        loaded = download.pretrained(
            source, num_classes=num_classes, key=key, batch_norm=batch_norm, **options
        )
    _check_fits(arch, batch_norm, loaded.model, pretrained)
    return from_loaded(loaded, rngs=rngs).model


def _check_fits(
    arch: str | Sequence[int | str] | None, batch_norm: bool, model: Any, pretrained: Any
) -> None:
    """Raise ValueError unless the loaded `model` is the architecture that was asked for."""
    same = arch is None or arch_lib.layer_list(arch) == arch_lib.layer_list(model.arch)
    if arch is not None:
        batch_norm = batch_norm or (isinstance(arch, str) and arch_lib.resolve(arch)[1])
        same = same and model.batch_norm == batch_norm
    elif batch_norm:  # no arch given: the weights fix it, and BatchNorm was asked for
        same = model.batch_norm
    if not same:
        label = arch_lib.arch_label(model.arch)
        names = [n for n, v in arch_lib.TORCHVISION_ARCHS.items() if v == (label, model.batch_norm)]
        fix = f"pass arch={names[0]!r}, or leave arch out" if names else "leave arch out"
        asked = "a BatchNorm net" if arch is None else f"{arch!r}, batch_norm={batch_norm}"
        raise ValueError(
            f"pretrained={pretrained!r} holds VGG {label} (batch_norm={model.batch_norm}), not "
            f"{asked}: {fix} (the weights fix the architecture)"
        )
