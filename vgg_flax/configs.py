"""The paper's networks as data: Table 1's layer lists and Table 2's parameter counts.

Every fact about the architectures lives here; the model, the summary and the converter read it.
"""

from __future__ import annotations

import dataclasses

# Table 1. An int is a 3x3 conv (stride 1, padding 1) with that many outputs, each followed by
# ReLU; "1x1-C" is a 1x1 conv (padding 0) with C outputs; "M" is 2x2 max-pool, stride 2; "LRN" is
# AlexNet's local response normalisation.
# fmt: off
CONFIGS: dict[str, tuple[int | str, ...]] = {
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
    for fan_in, fan_out in (
        (head_in, HEAD_WIDTH),
        (HEAD_WIDTH, HEAD_WIDTH),
        (HEAD_WIDTH, num_classes),
    ):
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

# Training (section 3.1, PAPER.md section 3): the paper's recipe, read by vgg_flax.train.
TRAIN_BATCH_SIZE = 256
TRAIN_MOMENTUM = 0.9
TRAIN_WEIGHT_DECAY = 5e-4  # L2 penalty multiplier
TRAIN_DROPOUT = 0.5
TRAIN_LEARNING_RATE = 1e-2
TRAIN_LR_FACTOR = 0.1  # divided by 10 when validation accuracy stops improving...
TRAIN_LR_MAX_DROPS = 3  # ...three times in total
TRAIN_EPOCHS = 74  # 370K iterations at batch 256
TRAIN_FINETUNE_LEARNING_RATE = 1e-3  # S=384 initialised from the S=256 model
TRAIN_SCALE_JITTER = (256, 512)  # multi-scale training: S drawn from [S_min, S_max]
# Deeper nets start from a trained A: these layers are copied (A's name -> the deeper net's name),
# the rest stay random. The paper names "the first four conv layers and the last three FC
# layers"; this is the shape-consistent reading (PAPER.md section 3).
WARM_START_LAYERS: dict[str, str] = {
    "conv1_1": "conv1_1",
    "conv2_1": "conv2_1",
    "conv3_1": "conv3_1",
    "conv3_2": "conv3_2",
    "fc6": "fc6",
    "fc7": "fc7",
    "fc8": "fc8",
}
# torchvision's classification reference recipe for VGG (references/classification/train.py):
# lr 0.01, momentum 0.9, weight decay 1e-4, lr divided by 10 every 30 epochs, 90 epochs.
TORCHVISION_RECIPE = {"learning_rate": 0.01, "weight_decay": 1e-4, "step_epochs": 30, "epochs": 90}


# PAPER.md section 6: torchvision's ImageNet weights, files under TORCHVISION_WEIGHTS_URL (the 8
# hex digits in each name start the file's SHA-256); preprocessing as TORCHVISION_* above.
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


# --- Results to reproduce (PAPER.md section 5): ILSVRC-2012 validation error in percent ---
# A training scale S is an int (fixed S) or (Smin, Smax) (scale jittering). Test scales Q follow
# section 3.2: a single Q = S, or 384 for jittered S; several Q = {S-32, S, S+32}, or
# {256, 384, 512} for jittered S.
@dataclasses.dataclass(frozen=True)
class PaperResult:
    """One row of Tables 3-6: nets (several for an ensemble), scales, protocol, errors."""

    table: int
    configs: tuple[str, ...]
    train_scale: int | tuple[int, int]
    test_scales: tuple[int, ...]
    protocol: str  # "dense", "multicrop" or "dense+multicrop"
    top1: float
    top5: float


def single_test_scale(train_scale: int | tuple[int, int]) -> tuple[int]:
    """Table 3's test scale: Q = S for a fixed S, Q = 384 for jittered S."""
    return (384,) if isinstance(train_scale, tuple) else (train_scale,)


def multi_test_scales(train_scale: int | tuple[int, int]) -> tuple[int, int, int]:
    """Table 4's test scales: {S-32, S, S+32} for a fixed S, {256, 384, 512} for jittered S."""
    if isinstance(train_scale, tuple):
        return (256, 384, 512)
    return (train_scale - 32, train_scale, train_scale + 32)


def _paper_rows() -> tuple[PaperResult, ...]:
    jit = TRAIN_SCALE_JITTER
    table3 = [
        ("A", 256, 29.6, 10.4), ("A-LRN", 256, 29.7, 10.5), ("B", 256, 28.7, 9.9),
        ("C", 256, 28.1, 9.4), ("C", 384, 28.1, 9.3), ("C", jit, 27.3, 8.8),
        ("D", 256, 27.0, 8.8), ("D", 384, 26.8, 8.7), ("D", jit, 25.6, 8.1),
        ("E", 256, 27.3, 9.0), ("E", 384, 26.9, 8.7), ("E", jit, 25.5, 8.0),
    ]  # fmt: skip
    table4 = [
        ("B", 256, 28.2, 9.6), ("C", 256, 27.7, 9.2), ("C", 384, 27.8, 9.2),
        ("C", jit, 26.3, 8.2), ("D", 256, 26.6, 8.6), ("D", 384, 26.5, 8.6),
        ("D", jit, 24.8, 7.5), ("E", 256, 26.9, 8.7), ("E", 384, 26.7, 8.6),
        ("E", jit, 24.8, 7.5),
    ]  # fmt: skip
    table5 = [
        ("D", "dense", 24.8, 7.5), ("D", "multicrop", 24.6, 7.5),
        ("D", "dense+multicrop", 24.4, 7.2),
        ("E", "dense", 24.8, 7.5), ("E", "multicrop", 24.6, 7.4),
        ("E", "dense+multicrop", 24.4, 7.1),
    ]  # fmt: skip
    rows = [
        PaperResult(3, (c,), s, single_test_scale(s), "dense", t1, t5) for c, s, t1, t5 in table3
    ]
    rows += [
        PaperResult(4, (c,), s, multi_test_scales(s), "dense", t1, t5) for c, s, t1, t5 in table4
    ]
    rows += [PaperResult(5, (c,), jit, (256, 384, 512), p, t1, t5) for c, p, t1, t5 in table5]
    rows.append(PaperResult(6, ("D", "E"), jit, (256, 384, 512), "dense+multicrop", 23.7, 6.8))
    return tuple(rows)


PAPER_RESULTS: tuple[PaperResult, ...] = _paper_rows()
