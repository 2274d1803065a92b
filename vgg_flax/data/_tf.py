"""TensorFlow and TFDS for the input pipeline, TensorFlow imported first and quietly
(`vgg_flax._import_order.import_tensorflow`): `from vgg_flax.data._tf import tf, tfds`; and
`as_written`, for the functions handed to tf.data."""

from collections.abc import Callable
from typing import TypeVar

from vgg_flax._import_order import import_tensorflow

tf = import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402  (it imports TensorFlow: after the quiet import)

__all__ = ["as_written", "tf", "tfds"]

F = TypeVar("F", bound=Callable)


def as_written(fn: F) -> F:
    """`fn`, traced by tf.data as written rather than after AutoGraph's conversion.

    tf.data converts every function it traces (and each function that one calls) with AutoGraph,
    which rewrites Python control flow on tensors into graph ops: the input pipeline's functions
    have none (their branches are on config values and dtypes; tensor choices are tf.cond and
    tf.where), so converting them only costs time, most of a pipeline's start (seconds of Python
    that hold the interpreter lock while JAX traces the training step).
    """
    return tf.autograph.experimental.do_not_convert(fn)
