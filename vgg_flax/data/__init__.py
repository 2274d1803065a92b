"""Input pipeline: the paper's training and test preprocessing over TFDS sources (needs the
`data` extra: TensorFlow, TFDS). Import torch/torchvision before this package if you use both."""

from vgg_flax.data.config import default_config
from vgg_flax.data.pipeline import (
    CorruptImageError,
    TrainIterator,
    eval_images,
    eval_iterator,
    local_eval_batches,
    train_iterator,
)
from vgg_flax.data.sources import make_source, prepare

__all__ = [
    "CorruptImageError",
    "TrainIterator",
    "default_config",
    "eval_images",
    "eval_iterator",
    "local_eval_batches",
    "make_source",
    "prepare",
    "train_iterator",
]
