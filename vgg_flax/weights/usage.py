"""The usage record: how to use one set of weights (as torchvision's `Weights`, timm's
`pretrained_cfg`).

A `Usage` says which network the weights fit (`architecture`: the fields of
`vgg_flax.architecture(model)`), how to feed it (`preprocessing`: a `vgg_flax.preprocessing.Preset`
with its numbers), what its outputs mean (`class_names`) and, where known, where the weights come
from (`source`) and how well they score (`metrics`). Registry entries are records; every
checkpoint writes one (`to_metadata`) and every reader returns one (`from_metadata`, through
`vgg_flax.weights.loading.read_usage`). Plain data: no JAX, no model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from vgg_flax.models.arch import ARCHITECTURE_FIELDS, HEAD_WIDTH
from vgg_flax.preprocessing import (
    CROP_SIZE,
    IMAGENET_MEAN_RGB,
    PRESETS,
    TORCHVISION_RESIZE,
    Preset,
    get_preset,
    mean_rgb,
)

# The metadata key of a checkpoint's record; checkpoints written before it hold the older, flat
# keys ("preprocessing" as a preset name, "input_size", ...) that `from_metadata` still reads.
USAGE_KEY = "usage"
# Metadata keys of the older, flat record (before USAGE_KEY).
LEGACY_KEYS = ("preprocessing", "input_size", "eval_scale", "train_scale", "train_flip")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a weight file comes from: its name, URL, digest (SHA-256 prefix or MD5) and size."""

    file: str | None = None
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class Usage:
    """How to use a set of weights; see the module docstring.

    - architecture: {arch, batch_norm, width, head_width, pooling, num_classes}, so that
      `create_model(**usage.architecture)` builds the network;
    - preprocessing: channel order, value range, mean, std, resize (smaller side), crop and
      interpolation (`Preset`); `input_size` is its crop, the size the network was trained at;
    - class_names: the name of each output (None: unknown, outputs are numbered);
    - features_only: the weights have no classifier (fc6-fc8);
    - source, metrics ({"acc1", "acc5"}: ImageNet top-1/top-5 accuracy in %, as published);
    - train_scale, train_flip: a training run's S (or (Smin, Smax)) and whether it flipped
      images (None: unknown), which evaluation takes as its defaults;
    - name: the registry name (e.g. "vgg16_bn"), where the weights have one;
    - eval_protocol: the test protocol a training run reported its accuracy with ("center":
      resize to the preset's resize, centre crop), which evaluation takes as its default.
    """

    architecture: Mapping[str, Any]
    preprocessing: Preset = PRESETS["torchvision"]
    class_names: tuple[str, ...] | None = None
    features_only: bool = False
    source: Source | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    train_scale: int | tuple[int, int] | None = None
    train_flip: bool | None = None
    name: str | None = None
    eval_protocol: str | None = None

    @property
    def input_size(self) -> int:
        """The crop size the network takes (224 unless it was trained smaller)."""
        return self.preprocessing.crop or CROP_SIZE

    @property
    def eval_scale(self) -> int:
        """The test scale Q: the smaller side before the centre crop."""
        return self.preprocessing.resize or round(TORCHVISION_RESIZE * self.input_size / CROP_SIZE)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (without the architecture, which checkpoints keep at top level)."""
        record: dict[str, Any] = {"preprocessing": self.preprocessing.to_json()}
        if self.class_names is not None:
            record["class_names"] = list(self.class_names)
        if self.features_only:
            record["features_only"] = True
        if self.source is not None:
            source = {k: v for k, v in dataclasses.asdict(self.source).items() if v is not None}
            record["source"] = source
        if self.metrics:
            record["metrics"] = dict(self.metrics)
        if self.train_scale is not None:
            scale = self.train_scale
            record["train_scale"] = list(scale) if isinstance(scale, tuple) else scale
        if self.train_flip is not None:
            record["train_flip"] = bool(self.train_flip)
        if self.name is not None:
            record["name"] = self.name
        if self.eval_protocol is not None:
            record["eval_protocol"] = self.eval_protocol
        return record


def architecture_of(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields among `metadata` (defaults for those an older record lacks)."""
    defaults = {
        "batch_norm": False,
        "width": 1.0,
        "head_width": HEAD_WIDTH,
        "pooling": "max",
        "num_classes": 1000,
    }
    spec = {key: metadata.get(key, defaults.get(key)) for key in ARCHITECTURE_FIELDS}
    if isinstance(spec["arch"], list):
        spec["arch"] = tuple(spec["arch"])
    return spec


def to_metadata(usage: Usage, **extra: Any) -> dict[str, Any]:
    """The JSON metadata a checkpoint records: the architecture fields, the record, `extra`.

    The one writer of usage records (`vgg_flax.save`, `vgg-flax convert`, training runs).
    """
    spec = dict(usage.architecture)
    if not isinstance(spec["arch"], str):
        spec["arch"] = list(spec["arch"])
    clash = set(extra) & {USAGE_KEY, *LEGACY_KEYS, "class_names"}
    if clash:
        raise ValueError(f"{sorted(clash)} belong in the usage record, not beside it")
    return {**extra, **spec, USAGE_KEY: usage.to_json()}


def from_metadata(
    metadata: Mapping[str, Any],
    *,
    data_mean: Sequence[float] | None = None,
    where: str = "checkpoint",
) -> Usage:
    """The usage record of a checkpoint's `metadata`: the one reader of recorded usage.

    Checkpoints written before records existed still read. Their "preprocessing" was a preset
    name without numbers: "torchvision", "caffe", "lpips" and "vgg16_features" are the presets
    of `vgg_flax.preprocessing.PRESETS`; "mean_rgb" (a training run's 0-255 minus the data mean)
    takes `data_mean` (the mean the run trained with, which `read_usage` finds in the run's
    config.json) where given, else ImageNet's mean pixel `IMAGENET_MEAN_RGB` (the training
    default for every dataset but the digits). A checkpoint that records no preprocessing at
    all is taken as torchvision's (what `vgg_flax.save` of converted torchvision weights wrote).
    Their "input_size" and "eval_scale" become the preset's crop and resize.
    """
    spec = architecture_of(metadata)
    record = metadata.get(USAGE_KEY)
    if record is not None:
        try:
            preset = Preset.from_json(record["preprocessing"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where} has an unreadable usage record: {error}") from error
        source = record.get("source")
        scale = record.get("train_scale")
        return Usage(
            spec,
            preset,
            _names(record.get("class_names")),
            bool(record.get("features_only", False)),
            Source(**source) if source else None,
            dict(record.get("metrics") or {}),
            tuple(scale) if isinstance(scale, list) else scale,
            record.get("train_flip"),
            record.get("name"),
            record.get("eval_protocol"),
        )
    return _legacy(metadata, spec, data_mean, where)


def _legacy(
    metadata: Mapping[str, Any],
    spec: dict[str, Any],
    data_mean: Sequence[float] | None,
    where: str,
) -> Usage:
    """The record of a checkpoint written before `USAGE_KEY` (see `from_metadata`)."""
    name = metadata.get("preprocessing") or "torchvision"
    size = metadata.get("input_size")
    scale = metadata.get("eval_scale")
    crop = int(size) if size else CROP_SIZE
    resize = int(scale) if scale else round(TORCHVISION_RESIZE * crop / CROP_SIZE)
    if name == "mean_rgb":
        preset = mean_rgb(data_mean or IMAGENET_MEAN_RGB, resize=resize, crop=crop)
    else:
        try:
            preset = dataclasses.replace(get_preset(name), resize=resize, crop=crop)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    train_scale = metadata.get("train_scale")
    return Usage(
        spec,
        preset,
        _names(metadata.get("class_names")),
        train_scale=tuple(train_scale) if isinstance(train_scale, list) else train_scale,
        train_flip=metadata.get("train_flip"),
    )


def _names(names: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(str(n) for n in names) if names else None


def with_classes(usage: Usage, num_classes: int) -> Usage:
    """`usage` for the same weights with a fresh `num_classes`-way fc8 (its names unknown)."""
    if num_classes == usage.architecture["num_classes"]:
        return usage
    spec = {**usage.architecture, "num_classes": num_classes}
    return dataclasses.replace(usage, architecture=spec, class_names=None, metrics={}, name=None)
