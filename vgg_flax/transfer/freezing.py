"""Which layers a fine-tuning run trains, and at what rate: frozen layers and rate multipliers.

A layer is a top-level entry of the parameters ("conv1_1", "bn1_1", "fc6", ...). `freeze` names
the last frozen layer in network order: a conv ("conv4_2"), a pooling ("pool5": the whole conv
trunk, its BatchNorm layers included) or a head layer ("fc7"). Rate multipliers map layer names
or shell patterns ("conv*", "fc[67]") to a factor of the learning rate; frozen layers get 0.
`vgg_flax.train.optim.make_optimizer(layer_rates=...)` applies them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

_LAYER = re.compile(r"^(conv|bn)(\d+)_(\d+)$|^fc(\d+)$")
_POOL = re.compile(r"^pool(\d+)$")


def _position(name: str) -> tuple[int, int, int]:
    match = _LAYER.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a VGG layer name (convB_I, bnB_I, fc6, fc7, fc8)")
    kind, block, index, fc = match.groups()
    if fc is not None:
        return (100 + int(fc), 0, 0)
    return (int(block), int(index), 0 if kind == "conv" else 1)


def network_order(layers: Iterable[str]) -> list[str]:
    """Layer names sorted as the network computes them (each BatchNorm after its conv)."""
    return sorted(layers, key=_position)


def frozen_layers(layers: Iterable[str], freeze: str | None) -> tuple[str, ...]:
    """The layers up to and including `freeze` (None or "": none), in network order."""
    ordered = network_order(layers)
    if not freeze:
        return ()
    pool = _POOL.match(freeze)
    if pool:
        last = (int(pool.group(1)), 10**6, 1)  # every layer of blocks up to the pooling's
    elif freeze in ordered:
        last = _position(freeze)
        if freeze.startswith("conv") and "bn" + freeze[4:] in ordered:
            last = (*last[:2], 1)  # a conv's BatchNorm freezes with it
    else:
        raise ValueError(
            f"freeze={freeze!r} names no layer of this net; give a pooling (pool1 .. pool5) or "
            f"one of {', '.join(ordered)}"
        )
    frozen = tuple(name for name in ordered if _position(name) <= last)
    if len(frozen) == len(ordered):
        raise ValueError(f"freeze={freeze!r} freezes every layer: nothing would be trained")
    return frozen


def layer_rates(
    layers: Iterable[str], freeze: str | None = None, multipliers: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Each layer's learning-rate multiplier: 0 when frozen, else the first matching pattern's
    value of `multipliers` (name or shell pattern -> factor), else 1."""
    ordered = network_order(layers)
    frozen = set(frozen_layers(ordered, freeze))
    multipliers = dict(multipliers or {})
    for pattern, factor in multipliers.items():
        if not fnmatch.filter(ordered, pattern):
            raise ValueError(
                f"learning-rate multiplier {pattern!r} matches no layer; layers: "
                f"{', '.join(ordered)}"
            )
        if not factor >= 0:
            raise ValueError(f"learning-rate multiplier {pattern!r}={factor!r} must be >= 0")
    rates = {}
    for name in ordered:
        factor = next((f for p, f in multipliers.items() if fnmatch.fnmatch(name, p)), 1.0)
        rates[name] = 0.0 if name in frozen else float(factor)
    return rates


def frozen_batch_norms(rates: Mapping[str, float]) -> tuple[str, ...]:
    """The BatchNorm layers whose rate is 0 (their statistics freeze with them)."""
    return tuple(name for name, rate in rates.items() if name.startswith("bn") and rate == 0)
