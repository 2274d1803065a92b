"""Evaluation: the paper's test protocols, padded batches of many image sizes, top-k errors."""

from vgg_flax.evaluate.batching import Scorer, ShapeBatcher, check_dense_size, padded_shape
from vgg_flax.evaluate.metrics import TopKCounts, label_ranks, topk_errors
from vgg_flax.evaluate.protocols import PROTOCOLS, evaluate, evaluate_arrays, views

__all__ = [
    "PROTOCOLS",
    "Scorer",
    "ShapeBatcher",
    "TopKCounts",
    "check_dense_size",
    "evaluate",
    "evaluate_arrays",
    "label_ranks",
    "padded_shape",
    "topk_errors",
    "views",
]
