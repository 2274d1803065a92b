"""The authors' Caffe models (`.caffemodel`, e.g. VGG_ILSVRC_16_layers) to vgg-flax variables.

Read with our own protobuf wire-format reader (`vgg_flax.formats.protobuf`), no Caffe needed.
caffe.proto's fields used here:
- NetParameter: `layers` = 2 (V1LayerParameter, the 2014 files), `layer` = 100 (LayerParameter);
- V1LayerParameter: name = 4, type = 5 (enum: CONVOLUTION = 4, INNER_PRODUCT = 14), blobs = 6;
- LayerParameter: name = 1, type = 2 (string: "Convolution", "InnerProduct"), blobs = 7;
- BlobProto: num, channels, height, width = 1-4 (legacy 4-D shape), data = 5 (packed float),
  shape = 7 (BlobShape: dim = 1), double_data = 8.
Convolutions are (out, in, kh, kw) cross-correlations as ours; InnerProduct weights are
(out, in) with fc6's inputs flattened in (C, H, W) order, which is torchvision's too, so the
same reordering (`vgg_flax.formats.torchvision`) applies. Inputs: BGR, 0-255, minus the mean pixel
(`vgg_flax.preprocessing.PRESETS["caffe"]`). Caffe rounds pooling output sizes up, we (and
Keras, torchvision) down: the two agree when height and width are multiples of 32.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
from typing import Any

import numpy as np

from vgg_flax.formats import check_head, protobuf
from vgg_flax.formats.torchvision import to_flax_layout
from vgg_flax.models.arch import HEAD_INPUT_SIZE

_V1_TYPES = {4: "Convolution", 14: "InnerProduct"}
_NEW, _V1 = 100, 2
_LAYER_FIELDS = {_NEW: (1, 2, 7), _V1: (4, 5, 6)}  # name, type, blobs
_WEIGHTED = ("Convolution", "InnerProduct")
_CONV = re.compile(r"conv\d+_\d+$")
_HEAD = ("fc6", "fc7", "fc8")


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a `.caffemodel`: name, type and its blobs as float32 arrays."""

    name: str
    type: str
    blobs: list[np.ndarray]


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """Every layer of a `.caffemodel`, both the V1 `layers` and the newer `layer` layouts."""
    path = os.fspath(path)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise ValueError(f"{path} is empty")
        message = None
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                layers = _read_net(path, memoryview(mapped))
            except ValueError as error:
                # Keep only the message: the traceback's frames hold views of the map, which
                # must all be gone before it closes.
                message = str(error)
    if message is not None:
        raise ValueError(message)
    return layers


def from_caffe(
    path: str | os.PathLike, *, head: str = "auto", dtype: Any = None
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """`{"params": ...}` from a Caffe VGG (`.caffemodel`); `vgg_flax.load(path)` builds the model.

    Convolutions keep their names (conv1_1, ...); the InnerProduct layers become fc6, fc7, fc8 in
    order, whatever their names (e.g. a fine-tuned "fc8_new"). `head` and `dtype` as in
    `vgg_flax.formats.keras.from_keras`.
    """
    check_head(head)
    path = os.fspath(path)
    params: dict[str, dict[str, np.ndarray]] = {}
    inner = 0
    for layer in read_caffemodel(path):
        if not layer.blobs:
            continue
        if layer.type not in _WEIGHTED:
            raise ValueError(
                f"{path}: layer {layer.name!r} of type {layer.type!r} has weights; only "
                "Convolution and InnerProduct layers are part of VGG (a different network?)"
            )
        if len(layer.blobs) != 2:
            raise ValueError(f"{path}: layer {layer.name!r} has {len(layer.blobs)} blobs, not 2")
        weight, bias = layer.blobs
        bias = bias.reshape(-1)
        if layer.type == "Convolution":
            if not _CONV.match(layer.name):
                raise ValueError(f"{path}: convolution {layer.name!r} is not named convB_I")
            weight = _squeeze(path, layer.name, weight, 4)
            kernel = to_flax_layout(weight, "conv")
            name = layer.name
        else:
            if inner >= len(_HEAD):
                raise ValueError(f"{path}: layer {layer.name!r} is a 4th InnerProduct layer")
            name, inner = _HEAD[inner], inner + 1
            weight = _squeeze(path, layer.name, weight, 2)
            if name == "fc6" and weight.shape[1] % HEAD_INPUT_SIZE**2:
                raise ValueError(f"{path}: layer {layer.name!r} has {weight.shape[1]} inputs")
            kernel = to_flax_layout(weight, "fc6" if name == "fc6" else "fc")
        if kernel.shape[-1] != bias.shape[0]:
            raise ValueError(f"{path}: layer {layer.name!r}: weights and bias disagree")
        if head == "drop" and name in _HEAD:
            continue
        cast = dtype if dtype is not None else np.float32
        params[name] = {"kernel": kernel.astype(cast, copy=False), "bias": bias.astype(cast)}
    _check(path, params, head, inner)
    return {"params": params}


def _read_net(path: str, data: memoryview) -> list[CaffeLayer]:
    layers: list[CaffeLayer] = []
    try:
        for number, wire, value in protobuf.fields(data):
            if number in _LAYER_FIELDS and wire == protobuf.LENGTH:
                layers.append(_read_layer(path, value, number, len(layers)))
    except protobuf.TruncatedError as error:
        where = f" after layer {layers[-1].name!r}" if layers else ""
        if error.field in _LAYER_FIELDS:
            where = f" in layer {_partial_name(data[error.start :], error.field)!r}{where}"
        raise ValueError(
            f"{path}: truncated{where} ({error}); the file is incomplete: download it again"
        ) from error
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise ValueError(f"{path}: not a Caffe model ({error})") from error
    if not any(layer.blobs for layer in layers):
        raise ValueError(f"{path}: no layers with weights: not a .caffemodel (a .prototxt?)")
    return layers


def _read_layer(path: str, data: memoryview, kind: int, index: int) -> CaffeLayer:
    name_field, type_field, blobs_field = _LAYER_FIELDS[kind]
    name, type_name, blobs = f"#{index}", "", []
    try:
        for number, _, value in protobuf.fields(data):
            if number == name_field:
                name = protobuf.text(value)
            elif number == type_field:
                type_name = protobuf.text(value) if kind == _NEW else _v1_type(value)
            elif number == blobs_field:
                blobs.append(_read_blob(value))
    except ValueError as error:
        raise ValueError(f"{path}: layer {name!r}: {error}") from error
    return CaffeLayer(name, type_name, blobs)


def _partial_name(data: memoryview, kind: int) -> str:
    """The name of a layer whose bytes are cut short, if they reach that far."""
    try:
        for number, _, value in protobuf.fields(data):
            if number == _LAYER_FIELDS[kind][0]:
                return protobuf.text(value)
    except ValueError:
        pass
    return "?"


def _v1_type(value: int | memoryview) -> str:
    if isinstance(value, memoryview):
        raise ValueError("V1 layer type is not an enum value")
    return _V1_TYPES.get(value, f"V1 type {value}")


def _read_blob(data: memoryview) -> np.ndarray:
    legacy = [1, 1, 1, 1]
    dims: np.ndarray | None = None
    floats: list[Any] = []
    doubles: list[Any] = []
    for number, _, value in protobuf.fields(data):
        if 1 <= number <= 4 and isinstance(value, int):
            legacy[number - 1] = value
        elif number == 5:
            floats.append(value)
        elif number == 8:
            doubles.append(value)
        elif number == 7 and isinstance(value, memoryview):
            dims = protobuf.packed([v for n, _, v in protobuf.fields(value) if n == 1], "varint")
    values = protobuf.packed(floats, "<f4") if floats else protobuf.packed(doubles, "<f8")
    shape = tuple(int(d) for d in dims) if dims is not None else tuple(legacy)
    if int(np.prod(shape)) != values.size:
        raise ValueError(f"a blob of shape {shape} holds {values.size} values")
    return values.astype(np.float32, copy=True).reshape(shape)


def _squeeze(path: str, name: str, weight: np.ndarray, ndim: int) -> np.ndarray:
    """Drop the leading 1s of legacy 4-D shapes (an InnerProduct's (1, 1, out, in))."""
    while weight.ndim > ndim and weight.shape[0] == 1:
        weight = weight[0]
    if weight.ndim != ndim:
        raise ValueError(f"{path}: layer {name!r} has weights of shape {weight.shape}")
    return weight


def _check(path: str, params: dict[str, Any], head: str, inner: int) -> None:
    if inner not in (0, len(_HEAD)):
        raise ValueError(f"{path}: {inner} InnerProduct layers; VGG has 3 (fc6, fc7, fc8)")
    if head == "keep" and inner == 0:
        raise ValueError(f"{path} has no InnerProduct layers (fc6-fc8); use head='auto'/'drop'")
    channels = 3
    convs = sorted((n for n in params if _CONV.match(n)), key=_order)
    for name in convs:
        kernel = params[name]["kernel"]
        if kernel.shape[2] != channels:
            raise ValueError(f"{path}: layer {name}: {kernel.shape[2]} inputs after {channels}")
        channels = kernel.shape[3]
    if "fc6" in params and params["fc6"]["kernel"].shape[2] != channels:
        raise ValueError(f"{path}: fc6 does not fit a 7x7x{channels} pool5 map")


def _order(name: str) -> tuple[int, int]:
    block, index = name[4:].split("_")
    return int(block), int(index)
