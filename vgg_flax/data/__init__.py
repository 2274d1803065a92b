"""Input pipeline: the paper's training and test preprocessing over TFDS sources.

Needs the `data` extra (TensorFlow, TFDS). Names load lazily, so `vgg_flax.data.cli` stays light.
torch/torchvision may be imported after this package: see vgg_flax/_import_order.py.
"""

import importlib

from vgg_flax._import_order import prepare_for_tensorflow

prepare_for_tensorflow()  # before any submodule imports TensorFlow

_EXPORTS = {
    "default_config": "vgg_flax.data.config",
    "CorruptImageError": "vgg_flax.data.pipeline",
    "TrainIterator": "vgg_flax.data.pipeline",
    "eval_images": "vgg_flax.data.pipeline",
    "eval_iterator": "vgg_flax.data.pipeline",
    "local_eval_batches": "vgg_flax.data.pipeline",
    "train_iterator": "vgg_flax.data.pipeline",
    "make_source": "vgg_flax.data.sources",
    "prepare": "vgg_flax.data.sources",
    "pixel_stats": "vgg_flax.data.stats",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vgg_flax.data' has no attribute {name!r}")
