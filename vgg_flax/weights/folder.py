"""Weights as safetensors: a `.safetensors` file, or a folder of `model.safetensors` and
`config.json` (the form of the hub's and timm's weights); `read` and `write`.

The tensors are in one of three layouts, recognised from their names: torchvision's
(`features.0.weight`, `classifier.0.weight`), timm's (`pre_logits.fc1.weight`, `head.fc.weight`)
or vgg-flax's own (every variable by its path, `params/conv1_1/kernel`, for any architecture:
narrow, LRN, 1x1 convs, other head widths). `config.json` is timm's (`pretrained_cfg`: mean, std,
input size, crop_pct, interpolation, classes) and, when vgg-flax wrote it, also holds the whole
usage record under "vgg_flax", which is then read instead. A bare vgg-flax-layout file carries
that record in its safetensors metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from vgg_flax.formats import timm
from vgg_flax.formats.foreign import architecture_of_params
from vgg_flax.formats.pth import _open_regular
from vgg_flax.formats.safetensors import LAYOUTS, read_safetensors, write_safetensors
from vgg_flax.formats.torchvision import (
    from_torchvision,
    infer_arch,
    model_fields,
    to_torchvision,
)
from vgg_flax.models import arch as arch_lib
from vgg_flax.models.vgg import VGG, architecture, create_model
from vgg_flax.weights import usage as usage_lib
from vgg_flax.weights.atomic import _umask, check_output
from vgg_flax.weights.usage import Usage

SUFFIX = ".safetensors"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# The key of vgg-flax's usage record in config.json and in a file's safetensors metadata.
RECORD_KEY = "vgg_flax"
# A config.json is a few KB (30 KB with ImageNet's class names): more is not a config.
MAX_CONFIG_BYTES = 16 << 20


def is_safetensors(source: Any) -> bool:
    """True for a `.safetensors` file and for a folder holding `model.safetensors`."""
    if not isinstance(source, str | os.PathLike):
        return False
    path = os.fspath(source)
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, WEIGHTS_FILE))
    return path.lower().endswith(SUFFIX) and os.path.isfile(path)


def layout_of(names: Any) -> str:
    """The layout of tensors named `names`: "torchvision", "timm" or "vgg-flax"."""
    names = list(names)
    if any(name.startswith(("params/", "batch_stats/")) for name in names):
        return "vgg-flax"
    if timm.is_timm_state(names):
        return "timm"
    if any(name.removeprefix("module.").startswith("features.") for name in names):
        return "torchvision"
    raise ValueError(
        f"tensors named {names[:3]}... are in none of the layouts vgg-flax reads: torchvision's "
        "(features.0.weight), timm's (pre_logits.fc1.weight) or vgg-flax's (params/conv1_1/kernel)"
    )


def read(
    source: str | os.PathLike, arch: str | None = None, *, head: str = "auto", dtype: Any = None
) -> tuple[dict[str, Any], Usage]:
    """`(variables, usage)` of a safetensors file or weights folder (see the module docstring).

    `arch` (a torchvision name) is checked against the tensors, else found from them; `head` and
    `dtype` are `from_torchvision`'s. The usage record: vgg-flax's own where it wrote one, else
    from timm's config.json, else torchvision's preprocessing.
    """
    path = os.fspath(source)
    config: dict[str, Any] = {}
    if os.path.isdir(path):
        config = _read_config(os.path.join(path, CONFIG_FILE))
        path = os.path.join(path, WEIGHTS_FILE)
    tensors, metadata = read_safetensors(path)
    record = config.get(RECORD_KEY)
    if record is None and RECORD_KEY in metadata:
        record = _json(metadata[RECORD_KEY], f"{path}'s {RECORD_KEY} metadata")
    layout = layout_of(tensors)
    if layout == "vgg-flax":
        variables = _unflatten(tensors, dtype)
        if head == "drop":
            variables["params"] = {
                k: v for k, v in variables["params"].items() if not k.startswith("fc")
            }
        spec = (
            usage_lib.architecture_of(record)
            if record
            else architecture_of_params(variables["params"])
        )
        if arch is not None and arch_lib.layer_list(arch) != arch_lib.layer_list(spec["arch"]):
            raise ValueError(f"{path} holds VGG {arch_lib.arch_label(spec['arch'])}, not {arch}")
    else:
        state = timm.timm_to_torchvision(tensors) if layout == "timm" else tensors
        found = arch or infer_arch(state)
        variables = from_torchvision(state, found, head=head, dtype=dtype)
        del tensors, state
        spec = architecture(create_model(found, **model_fields(found, variables["params"])))
    if record:
        usage = dataclasses.replace(usage_lib.from_metadata(record, where=path), architecture=spec)
    elif config:
        usage = Usage(spec, timm.preset_from_config(config), timm.class_names_from_config(config))
    else:
        usage = Usage(spec)
    return variables, usage


def write(
    directory: str | os.PathLike,
    model: VGG,
    variables: Mapping[str, Any],
    usage: Usage,
    *,
    layout: str | None = None,
    **metadata: Any,
) -> str:
    """Write a new weights folder (model.safetensors, config.json) for `read`, timm, torchvision.

    `layout` defaults to "torchvision" for torchvision's architectures with their head (a file
    timm loads too, as it loads torchvision's), else "vgg-flax". `usage` (its architecture
    `model`'s) and `metadata` go into config.json; the folder appears whole or not at all.
    Returns its absolute path.
    """
    path = check_output(directory, new=True)
    name = torchvision_name(model)
    params = variables.get("params", {})
    layout = layout or ("torchvision" if name and "fc8" in params else "vgg-flax")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    record = usage_lib.to_metadata(usage, **metadata)
    if layout == "vgg-flax":
        tensors = _flatten(variables)
        config: dict[str, Any] = {"architecture": f"vgg-flax:{model.arch}"}
        tags = {"format": "flax", RECORD_KEY: json.dumps(record)}
    else:
        if name is None:
            raise ValueError(
                f"{layout}'s layout holds torchvision's VGGs only (full width, head width "
                f"{arch_lib.HEAD_WIDTH}, max pooling); save this model with layout='vgg-flax'"
            )
        tensors = to_torchvision(variables, name)
        tensors = timm.torchvision_to_timm(tensors) if layout == "timm" else tensors
        classes = model.num_classes
        config = timm.config_for(name, usage.preprocessing, classes, usage.class_names)
        tags = {"format": "pt"}
    config[RECORD_KEY] = record
    parent, base = os.path.split(path)
    staging = tempfile.mkdtemp(prefix=f".{base}.", suffix=".partial", dir=parent)
    try:
        write_safetensors(os.path.join(staging, WEIGHTS_FILE), tensors, tags)
        with open(os.path.join(staging, CONFIG_FILE), "w") as file:
            json.dump(config, file, indent=2)
        os.chmod(staging, 0o777 & ~_umask())
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def torchvision_name(model: VGG) -> str | None:
    """torchvision's name of `model`'s architecture ("vgg16_bn"), None if it has none."""
    standard = (model.width, model.head_width, model.pooling) == (1.0, arch_lib.HEAD_WIDTH, "max")
    for name, (letter, batch_norm) in arch_lib.TORCHVISION_ARCHS.items():
        same = arch_lib.layer_list(letter) == arch_lib.layer_list(model.arch)
        if standard and same and batch_norm == model.batch_norm:
            return name
    return None


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with _open_regular(path) as file:
        text = file.read(MAX_CONFIG_BYTES + 1)
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is over {MAX_CONFIG_BYTES} bytes: not a weights config")
    config = _json(text, path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


def _json(text: str | bytes, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{where} is not valid JSON: {error}") from None


def _flatten(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {
        f"{collection}/{layer}/{name}": np.asarray(value)
        for collection, layers in variables.items()
        for layer, arrays in layers.items()
        for name, value in arrays.items()
    }


def _unflatten(tensors: Mapping[str, np.ndarray], dtype: Any) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    for key, value in tensors.items():
        parts = key.split("/")
        if len(parts) != 3:
            raise ValueError(f"tensor {key!r} is not a vgg-flax variable path (collection/layer/x)")
        collection, layer, name = parts
        value = value if dtype is None else value.astype(dtype)
        variables.setdefault(collection, {}).setdefault(layer, {})[name] = value
    if "params" not in variables:
        raise ValueError("a vgg-flax safetensors file needs params/... tensors")
    return variables
