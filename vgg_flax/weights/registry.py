"""The registry of published weight files that `vgg_flax.pretrained` downloads and converts.

Each entry is a usage record (`vgg_flax.weights.usage.Usage`): architecture, preprocessing with
its numbers, class names, source (file, URL, digest, size) and published accuracy.

torchvision's ImageNet weights live under TORCHVISION_WEIGHTS_URL; the 8 hex digits in each file
name start the file's SHA-256, which every download is checked against. The authors' own
networks (KERAS_WEIGHTS) come from keras.applications' server, checked against its MD5s.
"""

from __future__ import annotations

from vgg_flax.classes import imagenet_classes
from vgg_flax.models.arch import HEAD_WIDTH, TORCHVISION_ARCHS
from vgg_flax.preprocessing import PRESETS
from vgg_flax.weights.usage import Source, Usage

TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"


def _entry(
    name: str,
    arch: str,
    file: str,
    acc1: float | None = None,
    acc5: float | None = None,
    *,
    preprocessing: str = "torchvision",
    features_only: bool = False,
    url: str | None = None,
    md5: str | None = None,
    size: int | None = None,
) -> Usage:
    """The record of one published file of torchvision architecture `arch` (e.g. "vgg16_bn")."""
    letter, batch_norm = TORCHVISION_ARCHS[arch]
    spec = {
        "arch": letter,
        "batch_norm": batch_norm,
        "width": 1.0,
        "head_width": HEAD_WIDTH,
        "pooling": "max",
        "num_classes": 1000,
    }
    # File names end in -<first hex digits of the SHA-256>.pth where the server names them so.
    digest = None if md5 else file.rsplit("-", 1)[-1].split(".")[0]
    metrics = {"acc1": acc1, "acc5": acc5} if acc1 is not None else {}
    return Usage(
        spec,
        PRESETS[preprocessing],
        None if features_only else tuple(imagenet_classes()),
        features_only,
        Source(file, (url or TORCHVISION_WEIGHTS_URL) + file, digest, md5, size),
        metrics,
        name=name,
    )


def torchvision_arch(usage: Usage) -> str:
    """The torchvision architecture name (e.g. "vgg16_bn") of a registry record."""
    wanted = (usage.architecture["arch"], usage.architecture["batch_norm"])
    return next(name for name, letters in TORCHVISION_ARCHS.items() if letters == wanted)


# Sizes as download.pytorch.org serves the files; those of vgg11, vgg13 (with and without BN) and
# vgg16_features are not recorded here (downloads of them are capped, not sized).
TORCHVISION_WEIGHTS: dict[str, Usage] = {
    name: _entry(name, *rest[:-1], **rest[-1])
    for name, *rest in (
        ("vgg11", "vgg11", "vgg11-8a719046.pth", 69.020, 88.628, {}),
        ("vgg11_bn", "vgg11_bn", "vgg11_bn-6002323d.pth", 70.370, 89.810, {}),
        ("vgg13", "vgg13", "vgg13-19584684.pth", 69.928, 89.246, {}),
        ("vgg13_bn", "vgg13_bn", "vgg13_bn-abd245e5.pth", 71.586, 90.374, {}),
        ("vgg16", "vgg16", "vgg16-397923af.pth", 71.592, 90.382, {"size": 553_433_881}),
        ("vgg16_bn", "vgg16_bn", "vgg16_bn-6c64b313.pth", 73.360, 91.516, {"size": 553_507_836}),
        ("vgg19", "vgg19", "vgg19-dcbb9e9d.pth", 72.376, 90.876, {"size": 574_673_361}),
        ("vgg19_bn", "vgg19_bn", "vgg19_bn-c79401a0.pth", 74.218, 91.842, {"size": 574_769_405}),
        # Features only (its classifier holds NaN); RGB in 0-255 minus the mean, no std.
        (
            "vgg16_features",
            "vgg16",
            "vgg16_features-amdegroot-88682ab5.pth",
            None,
            None,
            {"preprocessing": "vgg16_features", "features_only": True},
        ),
    )
}

# The authors' Caffe VGG16/VGG19 as keras.applications converted them (BGR, 0-255, minus the
# mean pixel: preset "caffe"); MD5s as published in keras/src/applications/vgg16.py, vgg19.py.
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
KERAS_WEIGHTS: dict[str, Usage] = {
    f"vgg{depth}_caffe{suffix}": _entry(
        f"vgg{depth}_caffe{suffix}",
        f"vgg{depth}",
        f"vgg{depth}_weights_tf_dim_ordering_tf_kernels{suffix}.h5",
        preprocessing="caffe",
        features_only=bool(suffix),
        url=f"{KERAS_WEIGHTS_URL}vgg{depth}/",
        md5=md5,
        size=size,
    )
    for depth, suffix, md5, size in (
        (16, "", "64373286793e3c8b2b4e3219cbf3544b", 553_467_096),
        (16, "_notop", "6d6bbae143d832006294945121d1f1fc", 58_889_256),
        (19, "", "cbe5617147190e668d6c5d5026f83318", 574_710_816),
        (19, "_notop", "253f8cb515780f3b799900260a226db6", 80_134_624),
    )
}


def entry_for_file(file: str) -> Usage | None:
    """The registry record of the published weight file named `file`, or None."""
    for entry in (*TORCHVISION_WEIGHTS.values(), *KERAS_WEIGHTS.values()):
        if entry.source.file == file:
            return entry
    return None


def expected_size(file: str) -> int | None:
    """The published length in bytes of the registry's weight file `file`, or None if unknown."""
    entry = entry_for_file(file)
    return entry.source.size if entry is not None else None


# LPIPS's linear heads for the VGG trunk (Zhang et al., CVPR 2018), as the authors publish them in
# their repository and the `lpips` package ships them (torchmetrics ships the v0.1 file too):
# version -> SHA-256 of lpips/weights/v{version}/vgg.pth. v0.0 is the arXiv v1 release.
LPIPS_WEIGHTS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/"
LPIPS_VGG_HEADS: dict[str, str] = {
    "0.1": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "0.0": "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c",
}
# Their sizes in bytes: a download is refused as soon as it runs past them.
LPIPS_VGG_HEAD_SIZES: dict[str, int] = {"0.1": 7289, "0.0": 6735}

# DISTS's learned alpha and beta (Ding et al., TPAMI 2020): one file, (1, 1475, 1, 1) each, as the
# authors publish it and both the `dists-pytorch` and `torchmetrics` wheels ship it.
DISTS_WEIGHTS_URL = "https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt"
DISTS_WEIGHTS_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"
DISTS_WEIGHTS_SIZE = 12288
