"""Keras `.h5` and Caffe `.caffemodel` files: which files they are; `read`: (variables, usage)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vgg_flax.models import arch as arch_lib
from vgg_flax.preprocessing import PRESETS
from vgg_flax.weights.usage import Usage

# File suffix -> the preprocessing preset its weights expect (vgg_flax.preprocessing.PRESETS).
SUFFIXES = {".h5": "caffe", ".hdf5": "caffe", ".caffemodel": "caffe"}
_CONV = re.compile(r"conv(\d+)_(\d+)$")


def is_foreign_file(source: Any) -> bool:
    """True if `source` is a path with one of the suffixes this package reads."""
    if not isinstance(source, str | os.PathLike):
        return False
    return os.path.splitext(os.fspath(source))[1].lower() in SUFFIXES


def read(
    path: str | os.PathLike, *, head: str = "auto", dtype: Any = None
) -> tuple[dict[str, Any], Usage]:
    """`(variables, usage)` of a Keras `.h5`/`.weights.h5` or a Caffe `.caffemodel` file.

    The format comes from the suffix; the weights are the authors' Caffe networks, so the usage
    record's preprocessing is Caffe's (BGR, 0-255, minus the ImageNet mean pixel).
    """
    path = os.fspath(path)
    if path.lower().endswith(".caffemodel"):
        from vgg_flax.formats.caffe import from_caffe

        variables = from_caffe(path, head=head, dtype=dtype)
    else:
        from vgg_flax.formats.keras import from_keras

        variables = from_keras(path, head=head, dtype=dtype)
    preset = PRESETS[SUFFIXES[os.path.splitext(path)[1].lower()]]
    spec = architecture_of_params(variables["params"])
    return variables, Usage(spec, preset, features_only="fc8" not in variables["params"])


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


def architecture_of_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields (`vgg_flax.architecture`'s) that `params` fit, from their shapes.

    Layer list from the conv kernels (`layer_list`), head width and classes from fc6 and fc8
    (the defaults without a head); no BatchNorm, max pooling.
    """
    spec = {
        "arch": layer_list(params),
        "batch_norm": False,
        "width": 1.0,
        "head_width": arch_lib.HEAD_WIDTH,
        "pooling": "max",
        "num_classes": 1000,
    }
    if "fc8" in params:
        spec["num_classes"] = int(np.shape(params["fc8"]["bias"])[0])
        spec["head_width"] = int(np.shape(params["fc6"]["bias"])[0])
    return spec
