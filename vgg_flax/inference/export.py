"""Export a model's forward pass: serialised StableHLO (`jax.export`) or a TensorFlow SavedModel.

Both take preprocessed NHWC float32 images of one fixed size and any batch size (the batch
dimension is symbolic) and return the logits, with the weights inside. Neither needs vgg-flax to
run:

- StableHLO: `jax.export.deserialize(open(path, "rb").read()).call(images)` in any JAX process;
  the module carries one lowering per platform in `platforms` (the CPU kernels of
  `vgg_flax.models.ops` differ from the accelerators' ones, and JAX picks the one it runs on).
- SavedModel: `tf.saved_model.load(path).serve(images)` (also the "serving_default" signature);
  built with `jax.experimental.jax2tf`, which in this JAX version always wraps the same StableHLO
  in one TensorFlow op (XlaCallModule) and keeps the weights as TensorFlow variables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vgg_flax.weights.atomic import atomic_write, check_output

# A module lowered for several platforms runs on any of them; lowering needs no such device.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def _forward(model: Any) -> Callable[[Mapping[str, Any], jax.Array], jax.Array]:
    """`(variables, images) -> logits` in inference mode."""
    return lambda variables, images: model.apply(variables, images, train=False)


def _input_spec(image_size: int, batch_size: int | None) -> jax.ShapeDtypeStruct:
    """NHWC float32 images; the batch dimension symbolic when `batch_size` is None."""
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 (five 2x2 poolings), got {image_size}")
    (batch,) = jax.export.symbolic_shape("batch") if batch_size is None else (batch_size,)
    return jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)


def export_stablehlo(
    model: Any,
    variables: Mapping[str, Any],
    path: str | None = None,
    *,
    image_size: int = 224,
    batch_size: int | None = None,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> jax.export.Exported:
    """`jax.export` of `model`'s logits with `variables` inside; written to `path` when given.

    The file holds `Exported.serialize()`'s bytes; reload it with `jax.export.deserialize`.
    `batch_size` None leaves the batch dimension symbolic (any batch size at call time).
    """
    if path is not None:
        check_output(path)  # before the work
    weights = jax.tree.map(jnp.asarray, variables)
    forward = _forward(model)
    fun = jax.jit(lambda images: forward(weights, images))
    exported = jax.export.export(fun, platforms=tuple(platforms))(
        _input_spec(image_size, batch_size)
    )
    if path is not None:
        with atomic_write(path, "wb") as f:
            f.write(exported.serialize())
    return exported


def load_stablehlo(path: str) -> jax.export.Exported:
    """The `jax.export.Exported` in a file written by `export_stablehlo` (call it with `.call`)."""
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))


def export_savedmodel(
    model: Any,
    variables: Mapping[str, Any],
    path: str,
    *,
    image_size: int = 224,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> str:
    """A TensorFlow SavedModel of `model`'s logits at `path` (via jax2tf); returns `path`.

    The weights are TensorFlow variables; `serve(images)` (and the "serving_default"
    signature) takes float32 images of shape (batch, image_size, image_size, 3).
    """
    from vgg_flax._import_order import import_tensorflow

    tf = import_tensorflow()  # the `data` extra; only this export needs it
    from jax.experimental import jax2tf

    _input_spec(image_size, None)  # checks the size
    check_output(path, new=True)
    converted = jax2tf.convert(
        _forward(model),
        polymorphic_shapes=[None, f"(batch, {image_size}, {image_size}, 3)"],
        native_serialization_platforms=tuple(platforms),
        with_gradient=False,  # inference only: no custom gradient to save
    )
    module = tf.Module()
    # JAX's own dtypes (float64 arrays become float32 as in model.apply without x64).
    arrays = jax.device_get(jax.tree.map(jnp.asarray, dict(variables)))
    module.weights = tf.nest.map_structure(tf.Variable, jax.tree.map(np.asarray, arrays))
    module.serve = tf.function(
        lambda images: converted(module.weights, images),
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
        autograph=False,
    )
    signature = module.serve.get_concrete_function()
    tf.saved_model.save(module, path, signatures={"serving_default": signature})
    return path


def to_onnx(
    model: Any, variables: Mapping[str, Any], path: str | None = None, **options: Any
) -> Any:
    """An ONNX model of `model`'s forward pass: `vgg_flax.inference.onnx.to_onnx` (see there;
    needs the `deploy` extra: jax2onnx, onnx)."""
    from vgg_flax.inference import onnx

    return onnx.to_onnx(model, variables, path, **options)
