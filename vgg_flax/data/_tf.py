"""TensorFlow and TFDS for the input pipeline, TensorFlow imported first and quietly
(`vgg_flax._import_order.import_tensorflow`): `from vgg_flax.data._tf import tf, tfds`."""

from vgg_flax._import_order import import_tensorflow

tf = import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402  (it imports TensorFlow: after the quiet import)

__all__ = ["tf", "tfds"]
