"""The paper's networks as data: Table 1's layer lists and Table 2's parameter counts.

Every fact about the architectures lives here; the model, the summary and the converter read it.
"""

from __future__ import annotations

import dataclasses

# Table 1. An int is a 3x3 conv (stride 1, padding 1) with that many outputs, each followed by
# ReLU; "1x1-C" is a 1x1 conv (padding 0) with C outputs; "M" is 2x2 max-pool, stride 2; "LRN" is
# AlexNet's local response normalisation.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "A-LRN": (64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "C": (
        64, 64, "M", 128, 128, "M", 256, 256, "1x1-256", "M",
        512, 512, "1x1-512", "M", 512, 512, "1x1-512", "M",
    ),  # fmt: skip
    "D": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
        512, 512, 512, "M", 512, 512, 512, "M",
    ),  # fmt: skip
    "E": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),  # fmt: skip
}

# Table 2: parameters in millions, as the paper prints them.
TABLE2_MILLIONS: dict[str, int] = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}

# torchvision's names for the four configurations it ships: name -> (config, batch_norm).
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

# The classifier head (section 2.1): FC-4096, FC-4096, FC-classes; fc6 sees a 7x7 map.
HEAD_WIDTH = 4096
HEAD_INPUT_SIZE = 7
NETWORK_STRIDE = 32
MIN_CLASSIFY_SIZE = 32
MIN_DENSE_SIZE = NETWORK_STRIDE * HEAD_INPUT_SIZE  # 224: fc6's 7x7 window must fit pool5's map

# AlexNet's LRN (section 2.1, PAPER.md): alpha is not divided by the window size.
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 2.0

# PyTorch's BatchNorm2d defaults (momentum 0.1 in PyTorch's convention).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class Layer:
    """One entry of a layer list: kind is "conv", "pool" or "lrn"; names follow Caffe's."""

    kind: str
    name: str
    features: int = 0
    kernel: int = 0


def resolve(name: str) -> tuple[str, bool]:
    """Map a config letter or torchvision name to (config letter, batch_norm implied by name)."""
    if name in TORCHVISION_ARCHS:
        return TORCHVISION_ARCHS[name]
    upper = name.upper()
    if upper in CONFIGS:
        return upper, False
    known = ", ".join([*CONFIGS, *TORCHVISION_ARCHS])
    raise ValueError(f"unknown VGG configuration {name!r}; known names are: {known}")


def layers(config: str) -> tuple[Layer, ...]:
    """The named layers of a configuration's conv trunk, in order (conv1_1, ..., pool5)."""
    config = resolve(config)[0]
    out: list[Layer] = []
    block, index = 1, 0
    for entry in CONFIGS[config]:
        if entry == "M":
            out.append(Layer("pool", f"pool{block}"))
            block, index = block + 1, 0
        elif entry == "LRN":
            out.append(Layer("lrn", f"norm{block}"))
        else:
            index += 1
            if isinstance(entry, str):  # "1x1-C"
                kernel, features = 1, int(entry.split("-")[1])
            else:
                kernel, features = 3, entry
            out.append(Layer("conv", f"conv{block}_{index}", features, kernel))
    return tuple(out)


def activation_names(config: str, batch_norm: bool = False) -> tuple[str, ...]:
    """Every activation a model can return by name, in the order the network computes them."""
    names: list[str] = []
    for layer in layers(config):
        if layer.kind == "conv":
            suffix = layer.name[len("conv") :]
            names += [layer.name] + ([f"bn{suffix}"] if batch_norm else []) + [f"relu{suffix}"]
        else:
            names.append(layer.name)
    return (*names, "fc6", "relu6", "fc7", "relu7", "fc8", "logits")


def count_params(config: str, batch_norm: bool = False, num_classes: int = 1000) -> int:
    """Exact number of trainable parameters (weights, biases, BatchNorm scale and shift)."""
    total, channels = 0, 3
    for layer in layers(config):
        if layer.kind == "conv":
            total += layer.kernel**2 * channels * layer.features + layer.features
            total += 2 * layer.features if batch_norm else 0
            channels = layer.features
    head_in = channels * HEAD_INPUT_SIZE**2
    for fan_in, fan_out in ((head_in, HEAD_WIDTH), (HEAD_WIDTH, HEAD_WIDTH), (HEAD_WIDTH, num_classes)):
        total += fan_in * fan_out + fan_out
    return total


def count_macs(config: str, size: int = 224, num_classes: int = 1000) -> int:
    """Multiply-accumulates of one classification forward pass at size x size (convs and FCs)."""
    total, channels, side = 0, 3, size
    for layer in layers(config):
        if layer.kind == "conv":
            total += side * side * layer.kernel**2 * channels * layer.features
            channels = layer.features
        elif layer.kind == "pool":
            side //= 2
    head_in = channels * HEAD_INPUT_SIZE**2
    return total + head_in * HEAD_WIDTH + HEAD_WIDTH * HEAD_WIDTH + HEAD_WIDTH * num_classes


# --- Input pipeline (PAPER.md sections 3 and 4; section 6 for torchvision's weights) ---
# Training: the smaller side is rescaled to S (fixed, or drawn per image from [Smin, Smax]), then
# one random CROP_SIZE crop is taken.
TRAIN_SCALE = 256
TRAIN_SCALE_RANGE = (256, 512)
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
