"""Input constants: image sizes, the colour statistics and normalisations of each weight family.

Plain numbers (no TensorFlow), shared by the input pipeline, the weight registry and the parity
tool; docs/paper.md gives their sources. `Preset` is the one preprocessing vocabulary (channel
order, value range, mean, std, resize, crop, interpolation); `PRESETS` names each weight family's,
`mean_rgb` makes the paper's (0-255 minus a mean pixel); `preprocess` applies one (numpy, JAX or
TensorFlow), `fold_preprocessing` moves what folds exactly into conv1_1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Training: the smaller side is rescaled to S (fixed, or drawn per image from [Smin, Smax]), then
# one random CROP_SIZE crop is taken.
TRAIN_SCALE = 256
CROP_SIZE = 224
# AlexNet's PCA lighting for pixels in [0, 1], RGB order; eigenvectors are the COLUMNS.
PCA_LIGHTING_STD = 0.1
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# torchvision's weights: resize the smaller side to 256 (bilinear), centre crop 224, RGB in [0, 1]
# normalised by mean and std.
TORCHVISION_RESIZE = 256
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
# The authors' Caffe models: BGR pixels in 0-255 minus the ImageNet mean pixel, no std.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = CAFFE_MEAN_BGR[::-1]

# LPIPS (Zhang et al. 2018) feeds RGB in [-1, 1] through `(x - shift) / scale` (lpips.ScalingLayer).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# torchvision's features-only vgg16 (amdegroot's SSD conversion): RGB 0-255 minus this mean.
VGG16_FEATURES_MEAN_RGB = (123.0, 117.0, 104.0)


@dataclasses.dataclass(frozen=True)
class Preset:
    """How one set of weights wants its input: the one preprocessing vocabulary of vgg-flax.

    Geometry (test time): the smaller side is rescaled to `resize` (`interpolation`, antialiased
    as PIL and torchvision do it), then the central `crop` x `crop` window is taken; None leaves
    the image as it is (LPIPS). Values: from RGB images with values in [0, 1], channel c of
    `channel_order` ("RGB" or "BGR") reaches the network as `(lo + (hi - lo) * x - mean[c]) /
    std[c]`, x that channel's value and `(lo, hi) = value_range`; `mean` and `std` are in
    `channel_order` and in value_range units. `preprocess` applies it (numpy, JAX or TensorFlow).
    """

    name: str
    channel_order: str
    value_range: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: int | None = TORCHVISION_RESIZE
    crop: int | None = CROP_SIZE
    interpolation: str = "bilinear"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (lists for tuples), read back by `Preset.from_json`."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in (getattr(self, field.name),)
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Preset:
        """The preset `to_json` wrote; ValueError naming what is missing or wrong."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(record) - known
        if unknown or not {"name", "channel_order", "value_range", "mean"} <= set(record):
            raise ValueError(
                f"preprocessing record {dict(record)!r} is not a preset: it needs name, "
                f"channel_order, value_range and mean (and may have {', '.join(sorted(known))})"
            )
        values = dict(record)
        for key in ("value_range", "mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        preset = cls(**values)
        _check_order(preset)
        return preset


def mean_rgb(
    mean: Sequence[float], *, resize: int | None = TORCHVISION_RESIZE, crop: int | None = CROP_SIZE
) -> Preset:
    """The paper's input (section 2.1): RGB in 0-255 minus a mean pixel `mean` (RGB), no std."""
    return Preset(
        "mean_rgb", "RGB", (0.0, 255.0), tuple(float(v) for v in mean), resize=resize, crop=crop
    )


PRESETS: dict[str, Preset] = {
    "torchvision": Preset("torchvision", "RGB", (0.0, 1.0), TORCHVISION_MEAN, TORCHVISION_STD),
    "caffe": Preset("caffe", "BGR", (0.0, 255.0), CAFFE_MEAN_BGR),
    "lpips": Preset("lpips", "RGB", (-1.0, 1.0), LPIPS_SHIFT, LPIPS_SCALE, None, None),
    "vgg16_features": Preset("vgg16_features", "RGB", (0.0, 255.0), VGG16_FEATURES_MEAN_RGB),
}


def get_preset(preset: str | Preset | Mapping[str, Any]) -> Preset:
    """The preset named `preset` (a key of PRESETS), read from its JSON form, or `preset` itself."""
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, Mapping):
        return Preset.from_json(preset)
    if preset not in PRESETS:
        raise ValueError(
            f"unknown preprocessing preset {preset!r}; choose one of {', '.join(PRESETS)}"
        )
    return PRESETS[preset]


def preprocess(
    images: Any, preset: str | Preset, *, input_range: tuple[float, float] = (0.0, 1.0)
) -> Any:
    """Network input from RGB `images` with values in `input_range` (channels last) for `preset`.

    The one function that normalises images, for numpy, JAX and TensorFlow arrays alike: the
    input pipeline calls it on 0-255 tensors (`input_range=(0, 255)`), LPIPS on [-1, 1] images.
    """
    preset = get_preset(preset)
    _check_order(preset)
    lo, hi = preset.value_range
    in_lo, in_hi = input_range
    x = images[..., ::-1] if preset.channel_order == "BGR" else images
    if (in_lo, in_hi) != (lo, hi):
        if in_lo:
            x = x - np.float32(in_lo)
        # Multiply or divide by whichever factor is exact, so that torchvision's x / 255 and
        # Caffe's x * 255 are computed exactly as their own code computes them.
        span, in_span = hi - lo, in_hi - in_lo
        x = x * np.float32(span / in_span) if span >= in_span else x / np.float32(in_span / span)
        if lo:
            x = x + np.float32(lo)
    mean, std = np.asarray(preset.mean, np.float32), np.asarray(preset.std, np.float32)
    return (x - mean) / std


def fold_preprocessing(
    variables: Mapping[str, Any], preset: str | Preset, *, mean: bool = False
) -> tuple[dict[str, Any], Preset]:
    """Fold `preset`'s channel order and scales into conv1_1: `(new_variables, residual_preset)`.

    `residual_preset` is RGB in [0, 1] minus the preset's mean moved into that space; running
    `new_variables` on `preprocess(x, residual_preset)` equals running `variables` on
    `preprocess(x, preset)` exactly (up to rounding): a permutation and a per-channel factor
    commute with conv1_1 and with its zero padding. The mean does not fold exactly: moved into
    conv1_1's bias it is also subtracted where the 3x3 window overlaps the zero padding, where
    the original network sees a zero *after* subtracting the mean. `mean=True` folds it anyway
    (the residual preset is then the identity): conv1_1 is exact except on its one-pixel border.
    """
    preset = get_preset(preset)
    _check_order(preset)
    lo, hi = preset.value_range
    factor = (hi - lo) / np.asarray(preset.std, np.float64)  # per network channel
    mean_01 = (np.asarray(preset.mean, np.float64) - lo) / (hi - lo)  # per network channel
    order = [2, 1, 0] if preset.channel_order == "BGR" else [0, 1, 2]  # network c <- RGB order[c]
    params = variables["params"]
    kernel = np.asarray(params["conv1_1"]["kernel"])
    bias = np.asarray(params["conv1_1"]["bias"])
    folded = np.empty_like(kernel, dtype=np.float64)
    folded[:, :, order, :] = kernel.astype(np.float64) * factor[None, None, :, None]
    mean_in_rgb = np.empty(3)
    mean_in_rgb[order] = mean_01
    if mean:
        bias = bias - np.einsum("hwio,i->o", folded, mean_in_rgb)
        mean_in_rgb = np.zeros(3)
    conv = {"kernel": folded.astype(kernel.dtype), "bias": np.asarray(bias, kernel.dtype)}
    new = {**variables, "params": {**params, "conv1_1": conv}}
    residual = dataclasses.replace(
        preset,
        name=f"{preset.name}-folded",
        channel_order="RGB",
        value_range=(0.0, 1.0),
        mean=tuple(float(m) for m in mean_in_rgb),
        std=(1.0, 1.0, 1.0),
    )
    return new, residual


def _check_order(preset: Preset) -> None:
    if preset.channel_order not in ("RGB", "BGR"):
        raise ValueError(f"preset {preset.name!r}: channel_order must be 'RGB' or 'BGR'")
