"""Weight files of other frameworks: Keras HDF5 (`keras`) and Caffe `.caffemodel` (`caffe`).

Both readers return vgg-flax variables keyed by the paper's layer names (conv1_1, ..., fc6, fc7,
fc8); `model_for` builds the matching `VGG`, its layer list read from the conv kernels' shapes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vgg_flax.models import arch as arch_lib
from vgg_flax.models.vgg import VGG, create_model

# File suffix -> the preprocessing preset its weights expect (vgg_flax.preprocessing.PRESETS).
SUFFIXES = {".h5": "caffe", ".hdf5": "caffe", ".caffemodel": "caffe"}
HEAD_OPTIONS = ("auto", "keep", "drop")
_CONV = re.compile(r"conv(\d+)_(\d+)$")


def is_foreign_file(source: Any) -> bool:
    """True if `source` is a path with one of the suffixes this package reads."""
    if not isinstance(source, str | os.PathLike):
        return False
    return os.path.splitext(os.fspath(source))[1].lower() in SUFFIXES


def read(path: str | os.PathLike, *, head: str = "auto", dtype: Any = None) -> dict[str, Any]:
    """Variables from a Keras `.h5`/`.weights.h5` or a Caffe `.caffemodel` file (by suffix)."""
    path = os.fspath(path)
    if path.lower().endswith(".caffemodel"):
        from vgg_flax.formats.caffe import from_caffe

        return from_caffe(path, head=head, dtype=dtype)
    from vgg_flax.formats.keras import from_keras

    return from_keras(path, head=head, dtype=dtype)


def layer_list(params: Mapping[str, Any]) -> str | tuple[int | str, ...]:
    """The Table 1 name (or layer list) whose convs have these kernels, e.g. "D" for VGG16.

    Blocks and their convs come from the names convB_I; widths and 1x1 convs from the kernels.
    """
    blocks: dict[int, dict[int, Any]] = {}
    for name, layer in params.items():
        match = _CONV.match(name)
        if match:
            blocks.setdefault(int(match[1]), {})[int(match[2])] = np.shape(layer["kernel"])
    entries: list[int | str] = []
    for block in sorted(blocks):
        for index in sorted(blocks[block]):
            side, _, _, out = blocks[block][index]
            entries.append(out if side == 3 else f"1x1-{out}")
        entries.append("M")
    found = tuple(entries)
    for name, layers in arch_lib.ARCHS.items():
        if layers == found and "LRN" not in layers:
            return name
    return arch_lib.layer_list(found)


def model_for(variables: Mapping[str, Any], arch: str | None = None, **options: Any) -> VGG:
    """The `VGG` that `variables` fit (arch, head width, classes); `arch` checks it when given."""
    params = variables["params"]
    found = layer_list(params)
    if arch is not None and arch_lib.layer_list(arch) != arch_lib.layer_list(found):
        raise ValueError(
            f"these weights are VGG {arch_lib.arch_label(found)} ({found}), not {arch}; leave "
            "the architecture out to use the file's"
        )
    if "fc8" in params:
        options.setdefault("num_classes", int(np.shape(params["fc8"]["bias"])[0]))
        options.setdefault("head_width", int(np.shape(params["fc6"]["bias"])[0]))
    return create_model(found, **options)


def check_head(head: str) -> None:
    """Raise unless `head` is one of HEAD_OPTIONS."""
    if head not in HEAD_OPTIONS:
        raise ValueError(f"unknown head option {head!r}; choose one of {', '.join(HEAD_OPTIONS)}")


def preset_for_file(path: str | os.PathLike) -> str:
    """The preprocessing preset a weight file expects: the registry's, else by suffix.

    Keras and Caffe files: "caffe"; other `.pth` files: "torchvision".
    """
    from vgg_flax.weights import registry as weights

    name = os.path.basename(os.fspath(path))
    for entry in (*weights.TORCHVISION_WEIGHTS.values(), *weights.KERAS_WEIGHTS.values()):
        if entry.file == name:
            return entry.preprocessing
    return SUFFIXES.get(os.path.splitext(name)[1].lower(), "torchvision")
