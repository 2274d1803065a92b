"""The input pipeline's options: defaults per source, and validation with clear errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from vgg_flax import preprocessing

# The input normalisation: "mean_rgb" (the paper's: 0-255 minus the data's mean pixel, `mean_rgb`)
# or any preset of `vgg_flax.preprocessing.PRESETS`; `preprocessing_for` gives it with its numbers.
NORMALIZE_MODES = ("mean_rgb", *preprocessing.PRESETS)
CORRUPT_MODES = ("error", "skip")


def default_config(**overrides: Any) -> ml_collections.ConfigDict:
    """Defaults for `overrides.get("source", "digits")`, with `overrides` applied.

    digits: 32x32 renders, no rescale, whole-image crop, no flip (a flipped digit is another
    symbol), no colour shift. Other sources: the paper's S=256, random 224 crop, flip, PCA
    lighting 0.1, ImageNet's mean RGB. An override of None is no override (the source's
    default): a training config's unset `config.data` fields (`base_config.data_fields`).
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    source = overrides.get("source", "digits")
    digits = source == "digits"
    size = overrides.get("image_size") or 32
    cfg = dict(
        source=source,
        data_dir=None,  # TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets)
        manual_dir=None,  # imagenet2012: folder with ILSVRC2012_img_{train,val}.tar
        folder=None,  # source="folder": folder/<split>/<class>/<images> or folder/<class>/<images>
        val_fraction=None,  # folder/<class>/: the part split off as "val" (None: 0.2)
        split="train",  # training split
        eval_split="test" if digits else "validation",
        image_size=size,  # digits render size
        crop_size=size if digits else preprocessing.CROP_SIZE,
        scale=size if digits else preprocessing.TRAIN_SCALE,  # fixed S (smaller side)
        scale_range=None,  # (Smin, Smax): scale jittering, overrides `scale`
        random_crop=True,  # False: centre crop (augmentation off)
        flip=not digits,
        pca_lighting=0.0 if digits else preprocessing.PCA_LIGHTING_STD,  # std of alpha; 0 disables
        pca_eigval=None,  # None: ImageNet's (preprocessing.IMAGENET_PCA_EIGVAL)
        pca_eigvec=None,  # columns are eigenvectors; None: ImageNet's
        normalize="mean_rgb",
        mean_rgb=None,  # 0-255 RGB; None: the digits' own mean, else ImageNet's mean pixel
        eval_scale=size if digits else preprocessing.TORCHVISION_RESIZE,  # Q of the centre protocol
        shuffle_buffer=10_000,
        on_corrupt="error",  # "skip": drop undecodable images and count them
        prefetch=2,  # batches prepared ahead
        threads=None,  # tf.data worker threads (None: one per core)
    )
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown data options {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def resolve(data_config: Mapping[str, Any] | ml_collections.ConfigDict | None) -> dict[str, Any]:
    """A complete, validated plain dict: missing fields take the source's defaults."""
    given = dict(data_config.items()) if data_config is not None else {}
    cfg = dict(default_config(**given).items())
    _validate(cfg)
    if cfg["mean_rgb"] is None:
        cfg["mean_rgb"] = _default_mean(cfg)
    cfg["mean_rgb"] = tuple(float(v) for v in cfg["mean_rgb"])
    cfg["pca_eigval"] = tuple(cfg["pca_eigval"] or preprocessing.IMAGENET_PCA_EIGVAL)
    cfg["pca_eigvec"] = tuple(
        tuple(r) for r in (cfg["pca_eigvec"] or preprocessing.IMAGENET_PCA_EIGVEC)
    )
    return cfg


def valid_fields(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data_config` that are data options (those of `default_config`)."""
    known = set(default_config())
    return {key: value for key, value in data_config.items() if key in known}


def preprocessing_for(
    data_config: Mapping[str, Any] | ml_collections.ConfigDict | None,
) -> preprocessing.Preset:
    """The input preprocessing a data config feeds a network, with its numbers.

    Its `normalize` mode with the data's mean ("mean_rgb"), the test resize (`eval_scale`) and
    the crop (`crop_size`): what a training run records for using its model, and what the input
    pipeline applies (`vgg_flax.preprocessing.preprocess`).
    """
    cfg = resolve(data_config)
    resize, crop = int(cfg["eval_scale"]), int(cfg["crop_size"])
    if cfg["normalize"] == "mean_rgb":
        return preprocessing.mean_rgb(cfg["mean_rgb"], resize=resize, crop=crop)
    preset = preprocessing.PRESETS[cfg["normalize"]]
    return dataclasses.replace(preset, resize=resize, crop=crop)


def normalize_options(preset: preprocessing.Preset) -> dict[str, Any]:
    """The data options (`normalize`, `mean_rgb`) whose `preprocessing_for` values are `preset`'s.

    The inverse of `preprocessing_for` for pixel values (the geometry is the protocol's). Raises
    ValueError for a preset the pipeline has no name for (neither mean_rgb nor one of PRESETS).
    """
    values = (preset.channel_order, preset.value_range, preset.mean, preset.std)
    mean_rgb = preprocessing.mean_rgb(preset.mean)
    if values == (mean_rgb.channel_order, mean_rgb.value_range, mean_rgb.mean, mean_rgb.std):
        return {"normalize": "mean_rgb", "mean_rgb": tuple(preset.mean)}
    for name, known in preprocessing.PRESETS.items():
        if values == (known.channel_order, known.value_range, known.mean, known.std):
            return {"normalize": name}
    raise ValueError(
        f"the input pipeline cannot apply preprocessing {preset}: it takes mean_rgb or one of "
        f"{', '.join(preprocessing.PRESETS)}"
    )


def train_scale(cfg: Mapping[str, Any]) -> int | tuple[int, int]:
    """S for training: the (Smin, Smax) range when jittering, else the fixed S."""
    return tuple(cfg["scale_range"]) if cfg["scale_range"] else int(cfg["scale"])


def _validate(cfg: dict[str, Any]) -> None:
    crop = cfg["crop_size"]
    if cfg["normalize"] not in NORMALIZE_MODES:
        raise ValueError(f"normalize={cfg['normalize']!r}: use one of {NORMALIZE_MODES}")
    if cfg["on_corrupt"] not in CORRUPT_MODES:
        raise ValueError(f"on_corrupt={cfg['on_corrupt']!r}: use one of {CORRUPT_MODES}")
    if cfg["scale_range"]:
        smin, smax = cfg["scale_range"]
        if not crop <= smin <= smax:
            raise ValueError(
                f"scale_range={tuple(cfg['scale_range'])} needs crop_size ({crop}) <= Smin <= Smax"
            )
    elif cfg["scale"] < crop:
        raise ValueError(f"scale={cfg['scale']} is below crop_size={crop}: S must be >= the crop")
    if cfg["eval_scale"] < crop:
        raise ValueError(f"eval_scale={cfg['eval_scale']} is below crop_size={crop}")
    if cfg["val_fraction"] is not None and not 0 < cfg["val_fraction"] < 1:
        raise ValueError(f"val_fraction={cfg['val_fraction']} must be between 0 and 1 (exclusive)")
    if cfg["pca_lighting"] < 0:
        raise ValueError(f"pca_lighting={cfg['pca_lighting']} must be >= 0 (0 disables it)")


def _default_mean(cfg: dict[str, Any]) -> tuple[float, ...]:
    if cfg["source"] == "digits":
        from vgg_flax.data.sources import digits_arrays

        images = digits_arrays(cfg["image_size"])["train"][0]
        return tuple(np.mean(images, axis=(0, 1, 2), dtype=np.float64))
    return preprocessing.IMAGENET_MEAN_RGB
