"""The registry of published weight files that `vgg_flax.pretrained` downloads and converts.

torchvision's ImageNet weights live under TORCHVISION_WEIGHTS_URL; the 8 hex digits in each file
name start the file's SHA-256, which every download is checked against.
"""

from __future__ import annotations

import dataclasses

from vgg_flax.preprocessing import TORCHVISION_MEAN, TORCHVISION_STD

TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class Weights:
    """One torchvision weight file: its arch, file name, ImageNet accuracy and preprocessing.

    Pixels are scaled to [0, `pixel_scale`] before `(x - mean) / std`.
    """

    arch: str
    file: str
    acc1: float | None
    acc5: float | None
    mean: tuple[float, float, float] = TORCHVISION_MEAN
    std: tuple[float, float, float] = TORCHVISION_STD
    pixel_scale: float = 1.0
    features_only: bool = False


TORCHVISION_WEIGHTS: dict[str, Weights] = {
    "vgg11": Weights("vgg11", "vgg11-8a719046.pth", 69.020, 88.628),
    "vgg11_bn": Weights("vgg11_bn", "vgg11_bn-6002323d.pth", 70.370, 89.810),
    "vgg13": Weights("vgg13", "vgg13-19584684.pth", 69.928, 89.246),
    "vgg13_bn": Weights("vgg13_bn", "vgg13_bn-abd245e5.pth", 71.586, 90.374),
    "vgg16": Weights("vgg16", "vgg16-397923af.pth", 71.592, 90.382),
    "vgg16_bn": Weights("vgg16_bn", "vgg16_bn-6c64b313.pth", 73.360, 91.516),
    "vgg19": Weights("vgg19", "vgg19-dcbb9e9d.pth", 72.376, 90.876),
    "vgg19_bn": Weights("vgg19_bn", "vgg19_bn-c79401a0.pth", 74.218, 91.842),
    # Features only (its classifier holds NaN); RGB in 0-255 minus the mean, no std.
    "vgg16_features": Weights(
        "vgg16",
        "vgg16_features-amdegroot-88682ab5.pth",
        None,
        None,
        mean=(123.0, 117.0, 104.0),
        std=(1.0, 1.0, 1.0),
        pixel_scale=255.0,
        features_only=True,
    ),
}
