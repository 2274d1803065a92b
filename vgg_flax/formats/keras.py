"""keras.applications' VGG16/VGG19 weight files (HDF5) to vgg-flax variables, without Keras.

Three layouts are read:
- legacy (the released `vgg16_weights_tf_dim_ordering_tf_kernels*.h5` files, Keras 1): the root's
  `layer_names` attribute (split into `layer_names0`, `layer_names1`, ... when long) lists the
  layers; each layer group's `weight_names` names its datasets, e.g. `block1_conv1_W_1:0`;
- Keras 2 `save_weights`/`save` (`.h5`): the same attributes, datasets such as
  `block1_conv1/kernel:0`, under a `model_weights` group for whole-model files;
- Keras 3 `.weights.h5`: `layers/<conv2d_3>/vars/0, 1`, the layer's name in the `vars` group's
  `name` attribute.
Layer names map block{B}_conv{I} -> conv{B}_{I}, fc1 -> fc6, fc2 -> fc7, predictions -> fc8.
Conv kernels are HWIO in Keras as here. Keras flattens block5_pool's NHWC map in (H, W, C)
order (its `Flatten` on channels_last data), so fc1's 25088 rows reshape directly to fc6's
(7, 7, 512) window; tests/test_keras.py checks this against Keras's own outputs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vgg_flax.formats import check_head
from vgg_flax.models import arch as arch_lib

_KERAS_CONV = re.compile(r"block(\d+)_conv(\d+)$")
_KERAS_HEAD = {"fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}
_HEAD_ORDER = ("fc6", "fc7", "fc8")
# keras.applications' class names -> the Table 1 network they build (paper's Table 1).
KERAS_ARCHS = {"VGG16": "D", "VGG19": "E"}


def read_keras(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its weights in file order, for every layer with weights."""
    import h5py

    path = os.fspath(path)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(
            f"{path}: not a readable HDF5 file ({error}); a truncated download? delete it and "
            "fetch it again"
        ) from error
    with file:
        try:
            if "layers" in file and "layer_names" not in file.attrs:
                return _read_keras3(path, file["layers"])
            root = file["model_weights"] if "model_weights" in file else file
            return _read_legacy(path, root)
        except (OSError, KeyError) as error:  # a dataset cut short or a dangling name
            raise ValueError(f"{path}: unreadable weights ({error})") from error


def from_keras(
    source: str | os.PathLike | Mapping[str, Sequence[Any]],
    *,
    head: str = "auto",
    dtype: Any = None,
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """`{"params": ...}` for keras.applications' VGG16 (-> D) or VGG19 (-> E) from an HDF5 file.

    `source` is the file, or Keras layer name -> weights (e.g. `layer.get_weights()` of a model).

    `head`: "auto" loads fc6-fc8 when the file has them (a `_notop` file has not); "keep" fails
    without them; "drop" leaves them out. `dtype` casts every array (default float32 as stored).
    `vgg_flax.load(path)` also builds the model; inputs are BGR, 0-255, minus the mean pixel
    (`vgg_flax.preprocessing.PRESETS["caffe"]`).
    """
    check_head(head)
    if isinstance(source, Mapping):
        path, layers = "Keras model", source
    else:
        path = os.fspath(source)
        layers = read_keras(path)
    params: dict[str, dict[str, np.ndarray]] = {}
    for name, values in layers.items():
        if not len(values):
            continue
        ours = _our_name(path, name)
        kernel, bias = _kernel_and_bias(path, name, [np.asarray(v) for v in values])
        if ours.startswith("fc"):
            if head == "drop":
                continue
            side = arch_lib.HEAD_INPUT_SIZE if ours == "fc6" else 1
            if kernel.ndim != 2 or kernel.shape[0] % (side * side):
                raise ValueError(f"{path}: layer {name!r} has a kernel of shape {kernel.shape}")
            kernel = kernel.reshape(side, side, -1, kernel.shape[1])  # rows in (H, W, C) order
        elif kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
            raise ValueError(
                f"{path}: layer {name!r} has a kernel of shape {kernel.shape}, not (k, k, in, "
                "out) as Keras's channels_last files (tf_dim_ordering_tf_kernels) store it"
            )
        params[ours] = {"kernel": _cast(kernel, dtype), "bias": _cast(bias, dtype)}
    _check_complete(path, params, head)
    return {"params": params}


def _read_legacy(path: str, root: Any) -> dict[str, list[np.ndarray]]:
    layers: dict[str, list[np.ndarray]] = {}
    names = _attribute_list(root, "layer_names")
    if not names:
        raise ValueError(
            f"{path}: no 'layer_names' attribute and no 'layers' group: not a Keras weights file"
        )
    for name in names:
        if name not in root:
            raise ValueError(f"{path}: layer {name!r} is listed in layer_names but has no group")
        group = root[name]
        weights = []
        for weight in _attribute_list(group, "weight_names"):
            if weight not in group:
                raise ValueError(f"{path}: layer {name!r} lacks its weight {weight!r}")
            weights.append(_read_dataset(path, name, group[weight]))
        if weights:
            layers[name] = weights
    return layers


def _read_keras3(path: str, group: Any) -> dict[str, list[np.ndarray]]:
    named: dict[str, list[np.ndarray]] = {}
    unnamed: list[tuple[str, list[np.ndarray]]] = []
    for key in sorted(group, key=_creation_order):
        variables = group[key].get("vars")
        if variables is None or not len(variables):
            continue
        weights = [_read_dataset(path, key, variables[str(i)]) for i in range(len(variables))]
        name = variables.attrs.get("name")
        if name is None:  # older Keras 3 releases do not record the layer's own name
            unnamed.append((key, weights))
        else:
            named[name.decode() if isinstance(name, bytes) else str(name)] = weights
    return named | _name_by_order(path, unnamed)


def _name_by_order(path: str, layers: list[tuple[str, list[np.ndarray]]]) -> dict[str, Any]:
    """keras.applications' names for layers known only by class and creation order."""
    if not layers:
        return {}
    convs = [weights for key, weights in layers if key.startswith("conv2d")]
    dense = [weights for key, weights in layers if key.startswith("dense")]
    arch = {13: "D", 16: "E"}.get(len(convs))
    if arch is None or len(convs) + len(dense) != len(layers):
        keys = [key for key, _ in layers]
        raise ValueError(f"{path}: layers {keys} are not keras.applications' VGG16 or VGG19")
    names = [f"block{n[4:].replace('_', '_conv')}" for n in _conv_names(arch)]
    return dict(zip(names, convs, strict=True)) | dict(zip(_KERAS_HEAD, dense, strict=False))


def _conv_names(arch: str) -> list[str]:
    return [layer.name for layer in arch_lib.layers(arch) if layer.kind == "conv"]


def _creation_order(key: str) -> tuple[str, int]:
    base, _, index = key.rpartition("_")
    return (base, int(index)) if base and index.isdigit() else (key, 0)


def _attribute_list(group: Any, name: str) -> list[str]:
    """An attribute Keras may split into name0, name1, ... (HDF5's 64 KB header limit)."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, index = [], 0
        while f"{name}{index}" in group.attrs:
            chunks.append(group.attrs[f"{name}{index}"])
            index += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for c in chunks for v in c]


def _read_dataset(path: str, layer: str, dataset: Any) -> np.ndarray:
    try:
        return np.asarray(dataset)
    except OSError as error:
        raise ValueError(
            f"{path}: layer {layer!r}: cannot read {dataset.name} ({error}); the file is "
            "truncated or damaged"
        ) from error


def _our_name(path: str, name: str) -> str:
    match = _KERAS_CONV.match(name)
    if match:
        return f"conv{match[1]}_{match[2]}"
    if name in _KERAS_HEAD:
        return _KERAS_HEAD[name]
    raise ValueError(
        f"{path}: layer {name!r} is not a layer of keras.applications' VGG16/VGG19 (block{{B}}"
        "_conv{I}, fc1, fc2, predictions): a different network's weights?"
    )


def _kernel_and_bias(path: str, name: str, values: list[np.ndarray]) -> tuple[Any, Any]:
    kernels = [v for v in values if v.ndim >= 2]
    biases = [v for v in values if v.ndim == 1]
    if len(values) != 2 or len(kernels) != 1 or len(biases) != 1:
        shapes = [v.shape for v in values]
        raise ValueError(f"{path}: layer {name!r} holds {shapes}, not one kernel and one bias")
    if kernels[0].shape[-1] != biases[0].shape[0]:
        raise ValueError(
            f"{path}: layer {name!r}: kernel {kernels[0].shape} and bias {biases[0].shape} differ"
        )
    return kernels[0], biases[0]


def _check_complete(path: str, params: dict[str, Any], head: str) -> None:
    heads = [name for name in _HEAD_ORDER if name in params]
    if head == "keep" and not heads:
        raise ValueError(f"{path} has no classifier (a _notop file?); use head='auto' or 'drop'")
    if heads and heads != list(_HEAD_ORDER):
        missing = [name for name in _HEAD_ORDER if name not in params]
        raise ValueError(f"{path}: the classifier lacks {missing} (Keras: fc1, fc2, predictions)")
    convs = [name for name in params if not name.startswith("fc")]
    arches = {"D": _conv_names("D"), "E": _conv_names("E")}
    if sorted(convs) not in (sorted(names) for names in arches.values()):
        expected = arches["E"] if len(convs) > 13 else arches["D"]
        missing = [n for n in expected if n not in params]
        raise ValueError(
            f"{path}: conv layers {missing or sorted(convs)} missing or unexpected for VGG16/19; "
            "a truncated or foreign file?"
        )
    channels = 3
    for name in arches["E" if len(convs) == 16 else "D"]:
        kernel = params[name]["kernel"]
        if kernel.shape[2] != channels:
            raise ValueError(
                f"{path}: layer {name}: kernel {kernel.shape} after {channels} channels"
            )
        channels = kernel.shape[3]
    if heads and params["fc6"]["kernel"].shape[2] != channels:
        raise ValueError(f"{path}: fc1's kernel does not fit a 7x7x{channels} pool5 map")


def _cast(value: np.ndarray, dtype: Any) -> np.ndarray:
    return np.array(value, dtype=dtype if dtype is not None else value.dtype)
