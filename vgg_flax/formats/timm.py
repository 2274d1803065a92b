"""timm's VGG layout and its `config.json`, to and from vgg-flax's.

timm's VGGs (`timm.models.vgg`) keep torchvision's `features.{i}` but hold the classifier as a
`ConvMlp`: fc6 as `pre_logits.fc1` (a 7x7 conv, `(4096, 512, 7, 7)`), fc7 as `pre_logits.fc2`
(a 1x1 conv) and fc8 as `head.fc` (a Linear). The tensors are torchvision's, reshaped, which is
also how timm itself loads torchvision's files (`timm.models.vgg._filter_fn`); so both directions
go through `vgg_flax.formats.torchvision`. A timm hub repository's `config.json` holds the
weights' `pretrained_cfg` (mean, std, input size, crop_pct, interpolation, classes), which
`usage_from_config` turns into a usage record and `config_for` writes back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from vgg_flax.formats.torchvision import from_torchvision, to_torchvision
from vgg_flax.models import arch as arch_lib
from vgg_flax.preprocessing import CROP_SIZE, PRESETS, Preset

# torchvision's classifier Linear layers -> timm's modules.
_RENAMES = {"classifier.0.": "pre_logits.fc1.", "classifier.3.": "pre_logits.fc2.",
            "classifier.6.": "head.fc."}  # fmt: skip
_IMAGENET_DEFAULT_CROP_PCT = 0.875  # timm's default: 224 / 256, torchvision's resize


def is_timm_state(names: Any) -> bool:
    """True if state dict keys `names` are timm's VGG layout (a ConvMlp head, `head.fc`)."""
    return any(
        name.removeprefix("module.").startswith(("pre_logits.fc", "head.fc.")) for name in names
    )


def timm_to_torchvision(state: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision's state dict of the same tensors as timm's VGG `state` (the head flattened)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for theirs, ours in _RENAMES.items():
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                if key.endswith(".weight") and np.ndim(value) == 4:
                    value = np.reshape(_numpy(value), (np.shape(value)[0], -1))
        out[key] = value
    return out


def torchvision_to_timm(state: Mapping[str, Any]) -> dict[str, Any]:
    """timm's VGG state dict of torchvision's `state`: fc6/fc7 as 7x7/1x1 convs, fc8 `head.fc`."""
    out = {}
    for key, value in state.items():
        for theirs, ours in _RENAMES.items():
            if key.startswith(theirs):
                side = arch_lib.HEAD_INPUT_SIZE if theirs == "classifier.0." else 1
                if key.endswith(".weight") and theirs != "classifier.6.":
                    rows, cols = np.shape(value)
                    value = np.reshape(_numpy(value), (rows, cols // side**2, side, side))
                key = ours + key[len(theirs) :]
        out[key] = value
    return out


def from_timm(
    state: Mapping[str, Any], arch: str | None = None, *, head: str = "auto", dtype: Any = None
) -> dict[str, Any]:
    """vgg-flax variables of a timm VGG state dict (`arch`, e.g. "vgg16_bn", found if not given).

    timm's names are torchvision's (vgg11 ... vgg19_bn); `head` and `dtype` are
    `from_torchvision`'s.
    """
    return from_torchvision(timm_to_torchvision(state), arch, head=head, dtype=dtype)


def to_timm(variables: Mapping[str, Any], arch: str) -> dict[str, np.ndarray]:
    """timm's state dict for `timm.create_model(arch)` from vgg-flax variables (strict load)."""
    return torchvision_to_timm(to_torchvision(variables, arch))


def _numpy(value: Any) -> Any:
    return value if isinstance(value, np.ndarray) else np.asarray(value)


def preset_from_config(config: Mapping[str, Any]) -> Preset:
    """The preprocessing of a timm `config.json` (or a bare `pretrained_cfg`).

    timm resizes the smaller side to floor(crop / crop_pct) and centre-crops `input_size`, from
    RGB in [0, 1] normalised by `mean` and `std`. Named "torchvision" when it is torchvision's
    preprocessing exactly (timm's `tv_in1k` weights), "timm" otherwise.
    """
    cfg = config.get("pretrained_cfg", config)
    size = cfg.get("input_size") or (3, CROP_SIZE, CROP_SIZE)
    crop = int(size[-1])
    crop_pct = float(cfg.get("crop_pct") or _IMAGENET_DEFAULT_CROP_PCT)
    if not 0 < crop_pct <= 1 or len(size) != 3 or int(size[-2]) != crop:
        raise ValueError(
            f"timm config with input_size {list(size)} and crop_pct {crop_pct}: vgg-flax takes "
            "square inputs (3, S, S) and a crop_pct in (0, 1]"
        )
    torchvision = PRESETS["torchvision"]
    preset = Preset(
        "timm",
        "RGB",
        (0.0, 1.0),
        tuple(float(v) for v in cfg.get("mean", torchvision.mean)),
        tuple(float(v) for v in cfg.get("std", torchvision.std)),
        # timm floors crop / crop_pct; the epsilon keeps a written crop / resize exact.
        resize=math.floor(crop / crop_pct + 1e-6),
        crop=crop,
        interpolation=str(cfg.get("interpolation") or "bilinear"),
    )
    like_torchvision = dataclasses.replace(preset, name="torchvision")
    return like_torchvision if like_torchvision == torchvision else preset


def class_names_from_config(config: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The class names of a timm `config.json`: its label_names, or ImageNet's for `*in1k` tags."""
    names = config.get("label_names")
    if names:
        return tuple(str(name) for name in names)
    cfg = config.get("pretrained_cfg", config)
    classes = cfg.get("num_classes", config.get("num_classes"))
    if classes == 1000 and str(cfg.get("tag", "")).endswith("in1k"):
        from vgg_flax.classes import imagenet_classes

        return tuple(imagenet_classes())
    return None


def config_for(
    arch: str,
    preset: Preset,
    num_classes: int,
    class_names: tuple[str, ...] | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """timm's `config.json` for weights of torchvision's `arch` fed as `preset`.

    timm feeds RGB in [0, 1] minus `mean` over `std`; a preset in another range is rescaled to
    it exactly. A BGR preset (Caffe's) has no timm form: ValueError.
    """
    if preset.channel_order != "RGB" or preset.crop is None or preset.resize is None:
        raise ValueError(
            f"the {preset.name!r} preprocessing (channel order {preset.channel_order}, crop "
            f"{preset.crop}) has no timm config (RGB, fixed crop); save with layout='vgg-flax'"
        )
    lo, hi = preset.value_range
    scale = hi - lo
    cfg: dict[str, Any] = {
        "custom_load": False,
        "input_size": [3, preset.crop, preset.crop],
        "fixed_input_size": False,
        "interpolation": preset.interpolation,
        "crop_pct": preset.crop / preset.resize,
        "crop_mode": "center",
        "mean": [(m - lo) / scale for m in preset.mean],
        "std": [s / scale for s in preset.std],
        "num_classes": num_classes,
        "pool_size": [arch_lib.HEAD_INPUT_SIZE] * 2,
        "first_conv": "features.0",
        "classifier": "head.fc",
    }
    if tag:
        cfg = {"tag": tag, **cfg}
    config: dict[str, Any] = {
        "architecture": arch,
        "num_classes": num_classes,
        "num_features": 512,
        "global_pool": "avg",
        "pretrained_cfg": cfg,
    }
    if class_names is not None:
        config["label_names"] = list(class_names)
    return config
