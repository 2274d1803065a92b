"""The VGG architectures as data: Table 1's layer lists, Table 2's sizes, torchvision's names.

A layer list is a tuple of entries: an int is a 3x3 conv (stride 1, padding 1) with that many
outputs, each followed by ReLU; "1x1-C" is a 1x1 conv (padding 0) with C outputs; "M" is a 2x2
pooling with stride 2; "LRN" is AlexNet's local response normalisation. `VGG.arch` takes one of
Table 1's names or such a tuple; `layers` turns either into named layers (Caffe's names:
conv1_1, ..., pool5), scaling the conv widths by a `width` multiplier. docs/paper.md states the
facts these lists and counts come from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Entry = int | str
LayerList = tuple[Entry, ...]

# Table 1.
# fmt: off
ARCHS: dict[str, LayerList] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "A-LRN": (64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "C": (
        64, 64, "M", 128, 128, "M", 256, 256, "1x1-256", "M",
        512, 512, "1x1-512", "M", 512, 512, "1x1-512", "M",
    ),
    "D": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
        512, 512, 512, "M", 512, 512, 512, "M",
    ),
    "E": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}
# fmt: on

# Table 2: parameters in millions, as the paper prints them.
TABLE2_MILLIONS: dict[str, int] = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}

# torchvision's names for the four architectures it ships: name -> (Table 1 name, batch_norm).
TORCHVISION_ARCHS: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False),
    "vgg11_bn": ("A", True),
    "vgg13": ("B", False),
    "vgg13_bn": ("B", True),
    "vgg16": ("D", False),
    "vgg16_bn": ("D", True),
    "vgg19": ("E", False),
    "vgg19_bn": ("E", True),
}

# The classifier head: FC-4096, FC-4096, FC-classes; fc6 sees a 7x7 map (pool5 at 224x224).
HEAD_WIDTH = 4096
HEAD_INPUT_SIZE = 7
NETWORK_STRIDE = 32  # five 2x2 poolings
MIN_CLASSIFY_SIZE = 32
MIN_DENSE_SIZE = NETWORK_STRIDE * HEAD_INPUT_SIZE  # 224: fc6's 7x7 window must fit pool5's map
# "l2": DISTS's L2 pooling (Ding et al. 2020), a 3x3 Hann window with stride 2 on the squared map.
POOLINGS = ("max", "avg", "l2")
# The fields that define a network's variables: `vgg_flax.architecture(model)` gives them and
# checkpoints record them. Plain data here, so storage reads them without importing the module.
ARCHITECTURE_FIELDS = ("arch", "batch_norm", "width", "head_width", "pooling", "num_classes")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One named layer of the conv trunk: kind is "conv", "pool" or "lrn"."""

    kind: str
    name: str
    features: int = 0
    kernel: int = 0


def resolve(name: str) -> tuple[str, bool]:
    """A Table 1 name or torchvision name -> (Table 1 name, batch_norm implied by the name)."""
    if name in TORCHVISION_ARCHS:
        return TORCHVISION_ARCHS[name]
    upper = name.upper()
    if upper in ARCHS:
        return upper, False
    known = ", ".join([*ARCHS, *TORCHVISION_ARCHS])
    raise ValueError(f"unknown VGG architecture {name!r}; known names are: {known}")


def layer_list(arch: str | Sequence[Entry]) -> LayerList:
    """The layer list of `arch`: a Table 1 or torchvision name, or a list given as is (checked)."""
    if isinstance(arch, str):
        return ARCHS[resolve(arch)[0]]
    entries = tuple(arch)
    for entry in entries:
        valid = entry in ("M", "LRN") or (isinstance(entry, int) and entry > 0)
        if isinstance(entry, str) and entry.startswith("1x1-"):
            valid = entry[4:].isdigit() and int(entry[4:]) > 0
        if not valid or isinstance(entry, bool):
            raise ValueError(
                f"bad layer list entry {entry!r} in {entries}: use an int C (3x3 conv, C "
                "outputs), '1x1-C' (1x1 conv), 'M' (2x2 pooling) or 'LRN'"
            )
    if entries.count("M") != NETWORK_STRIDE.bit_length() - 1:
        raise ValueError(
            f"a VGG layer list needs exactly 5 'M' poolings (the head expects a stride of "
            f"{NETWORK_STRIDE}), got {entries.count('M')} in {entries}"
        )
    return entries


def arch_label(arch: str | Sequence[Entry]) -> str:
    """A short name for messages: the Table 1 name, or "custom" for a user's layer list."""
    return resolve(arch)[0] if isinstance(arch, str) else "custom"


def scaled(channels: int, width: float) -> int:
    """`channels` times the `width` multiplier, rounded, at least 1."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(1, round(channels * width))


def layers(arch: str | Sequence[Entry], width: float = 1.0) -> tuple[Layer, ...]:
    """The named layers of a conv trunk in order (conv1_1, ..., pool5), widths scaled."""
    out: list[Layer] = []
    block, index = 1, 0
    for entry in layer_list(arch):
        if entry == "M":
            out.append(Layer("pool", f"pool{block}"))
            block, index = block + 1, 0
        elif entry == "LRN":
            out.append(Layer("lrn", f"norm{block}"))
        else:
            index += 1
            if isinstance(entry, str):  # "1x1-C"
                kernel, features = 1, int(entry[4:])
            else:
                kernel, features = 3, entry
            out.append(Layer("conv", f"conv{block}_{index}", scaled(features, width), kernel))
    return tuple(out)


def widths_of(arch: str | Sequence[Entry], params: Mapping[str, Any]) -> dict[str, Any]:
    """`create_model`'s `width` and `head_width` that `params` (vgg-flax layer names) have.

    Read from two biases, which have the same shape in every layout: the trunk's last conv
    (its widest, so the finest measure of the multiplier) and fc6 (absent: the default head).
    Only fields that differ from the paper's sizes are returned; a net made with another width
    is not always told apart by two tensors, so callers check every shape at these widths.
    """
    last = [layer for layer in layers(arch) if layer.kind == "conv"][-1]
    widths: dict[str, Any] = {}
    if last.name in params and "bias" in params[last.name]:
        channels = int(np.shape(params[last.name]["bias"])[0])
        if channels != last.features:
            widths["width"] = channels / last.features
    if "fc6" in params and "bias" in params["fc6"]:
        units = int(np.shape(params["fc6"]["bias"])[0])
        if units != HEAD_WIDTH:
            widths["head_width"] = units
    return widths


def activation_names(arch: str | Sequence[Entry], batch_norm: bool = False) -> tuple[str, ...]:
    """Every activation a model can return by name, in the order the network computes them."""
    names: list[str] = []
    for layer in layers(arch):
        if layer.kind == "conv":
            suffix = layer.name[len("conv") :]
            names += [layer.name] + ([f"bn{suffix}"] if batch_norm else []) + [f"relu{suffix}"]
        else:
            names.append(layer.name)
    return (*names, "fc6", "relu6", "fc7", "relu7", "fc8", "logits")


def _head_shapes(channels: int, head_width: int, num_classes: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of fc6, fc7, fc8."""
    return [
        (channels * HEAD_INPUT_SIZE**2, head_width),
        (head_width, head_width),
        (head_width, num_classes),
    ]


def count_params(
    arch: str | Sequence[Entry],
    batch_norm: bool = False,
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    head_width: int = HEAD_WIDTH,
) -> int:
    """Exact number of trainable parameters (weights, biases, BatchNorm scale and shift)."""
    total, channels = 0, 3
    for layer in layers(arch, width):
        if layer.kind == "conv":
            total += layer.kernel**2 * channels * layer.features + layer.features
            total += 2 * layer.features if batch_norm else 0
            channels = layer.features
    return total + sum(i * o + o for i, o in _head_shapes(channels, head_width, num_classes))


def count_macs(
    arch: str | Sequence[Entry],
    size: int = 224,
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    head_width: int = HEAD_WIDTH,
) -> int:
    """Multiply-accumulates of one classification forward pass at size x size (convs and FCs)."""
    total, channels, side = 0, 3, size
    for layer in layers(arch, width):
        if layer.kind == "conv":
            total += side * side * layer.kernel**2 * channels * layer.features
            channels = layer.features
        elif layer.kind == "pool":
            side //= 2
    return total + sum(i * o for i, o in _head_shapes(channels, head_width, num_classes))
