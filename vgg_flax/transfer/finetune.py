"""A fine-tuning config completed from its weights: architecture, preprocessing, layer rates.

`experiments/configs/finetune.py` names the weights (`init_from`: anything `vgg_flax.load`
reads, or a pretrained name) and sets `from_weights`; `complete` then copies the architecture
(arch, BatchNorm, widths, pooling) and the input preprocessing (normalisation, crop, scales) from
the weights' usage record into the config, before the trainer builds anything. `layer_rates`
turns the config's `freeze` and `layer_rates` ("conv*=0.1,fc6=0.5") into each layer's
multiplier of the learning rate (`vgg_flax.transfer.freezing`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from vgg_flax.transfer import freezing

BN_STATS = ("frozen", "update")


def load_weights(source: str) -> Any:
    """`(model, variables, usage)` of a pretrained name, a weight file or a checkpoint folder."""
    from vgg_flax.cli.predict import load_weights as load

    return load(source, None)


def weights_usage(source: str) -> Any:
    """The usage record of `source` (a pretrained name's is the registry's: no download)."""
    from vgg_flax.weights.factory import list_pretrained, pretrained_entry
    from vgg_flax.weights.loading import read_usage

    if source in list_pretrained() and not os.path.exists(source):
        return pretrained_entry(source)
    if not os.path.exists(source):
        raise ValueError(
            f"init_from={source!r}: no such file or folder, and not a pretrained name "
            f"({', '.join(list_pretrained())})"
        )
    return read_usage(source)


def complete(config: Any) -> Any:
    """`config` with the weights' architecture and preprocessing when `from_weights` is set.

    An image folder (`data.source="folder"`) with one class, or with a file that is not an image
    the trainer reads, is refused here, naming it, before anything is built."""
    if not config.get("from_weights", False):
        return config
    if not config.init_from:
        raise ValueError("from_weights needs init_from: the weights to fine-tune")
    if config.get("bn_stats", "update") not in BN_STATS:
        raise ValueError(f"bn_stats={config.bn_stats!r}: use one of {', '.join(BN_STATS)}")
    if config.data.get("source") == "folder" and config.data.get("folder"):
        from vgg_flax.transfer.images import check_training_folder

        check_training_folder(config.data.folder, (config.data.split, config.data.eval_split))
    usage = weights_usage(config.init_from)
    if usage.features_only:
        raise ValueError(f"{config.init_from} has no fc6/fc7 (features only): it cannot be tuned")
    config = config.copy_and_resolve_references()
    with config.unlocked():  # absl's --config flag locks it; these fields may be new
        _from_usage(config, usage)
    return config


def _from_usage(config: Any, usage: Any) -> None:
    """Set the architecture and data fields of `config` from a usage record, in place."""
    from vgg_flax.data.config import normalize_options

    spec = usage.architecture
    for field in ("arch", "batch_norm", "width", "head_width", "pooling"):
        config[field] = (
            list(spec[field])
            if field == "arch" and not isinstance(spec[field], str)
            else spec[field]
        )
    preset = usage.preprocessing
    for key, value in normalize_options(preset).items():
        config.data[key] = value
    config.data.crop_size = usage.input_size
    config.data.eval_scale = usage.eval_scale
    scale = usage.train_scale
    config.data.scale = scale if isinstance(scale, int) else usage.eval_scale


def layer_rates(config: Any, layers: Iterable[str]) -> dict[str, float] | None:
    """Each layer's learning-rate multiplier from `freeze` and `layer_rates`; None: all 1."""
    freeze = config.get("freeze", "")
    spec = config.get("layer_rates", "")
    if not freeze and not spec:
        return None
    multipliers = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        pattern, sep, value = item.partition("=")
        try:
            multipliers[pattern.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(
                f"layer_rates entry {item!r} is not PATTERN=FACTOR (e.g. 'conv*=0.1,fc6=0.5')"
            ) from None
    return freezing.layer_rates(layers, freeze, multipliers)


def frozen_batch_norms(config: Any, rates: dict[str, float] | None) -> tuple[str, ...]:
    """The BatchNorm layers that run on (and keep) their running statistics."""
    if not rates or config.get("bn_stats", "frozen") == "update":
        return ()
    return freezing.frozen_batch_norms(rates)
