"""ONNX export through `jax2onnx`: any batch size, and in the dense modes any image size.

`to_onnx(model, variables, path, mode=..., image_size=..., metadata=...)` writes one
self-contained `.onnx` file (the weights are initializers inside it) whose input "images" is
preprocessed NHWC float32 images and whose output "logits" is the model's output in `mode`:

- "classify": logits (batch, classes) of images of one fixed size, chosen at export (any side from
  32 up; the head's adaptive pooling to fc6's 7x7 window is traced at that size);
- "dense": the dense-evaluation class scores averaged over space, (batch, classes), for images
  of any height and width of at least 224 (symbolic in the file);
- "dense_map": the class score map (batch, h, w, classes), images as in "dense".

The batch dimension is symbolic in every mode. PyTorch's `torch.onnx` export of torchvision's
VGG bakes the input size into `AdaptiveAvgPool2d`; here the dense modes are the paper's fully
convolutional net, which has no pooling to a fixed size, so the file takes every size.

`metadata` (e.g. `usage_metadata(...)`: the preprocessing with its numbers, the class names) is
written to the model's `metadata_props`, each value as JSON; `read_metadata` reads them back.
The trace uses the model's standard `lax` kernels (`kernels="lax"`): the CPU formulations of
`vgg_flax.models.ops` pick their branch by platform, which ONNX has no notion of; both compute
the same sums. A `vgg_flax.inference.quantize.QuantizedModel` exports as well.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from vgg_flax.models import arch
from vgg_flax.weights.atomic import atomic_write, check_output

MODES = ("classify", "dense", "dense_map")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
PROTOBUF_LIMIT = 2**31 - 1  # one serialised ModelProto; larger models would need external data


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an `image_size` given as one side or as (height, width)."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = (int(side) for side in image_size)
    return (height, width)


def check_options(
    mode: str,
    image_size: int | Sequence[int] | None,
    trained_pool5: int | None = None,
    path: str | os.PathLike | None = None,
    quantize: str | None = None,
) -> None:
    """Refuse, before any work, options `to_onnx` cannot honour (with the fix in the message).

    `quantize`: the model's `vgg_flax.inference.quantize` mode, if any.
    """
    if quantize == "int8":
        # jax2onnx lowers an int8 x int8 convolution to ONNX Conv on int32, which ONNX does not
        # define (it has ConvInteger for that), so onnxruntime refuses the file.
        raise ValueError(
            "ONNX export of --quantize int8 (int8 activations) is not supported: jax2onnx "
            "writes its int8 convolutions as Conv on int32, which ONNX does not define; use "
            "--format stablehlo for int8, or --quantize int8-weights for ONNX"
        )
    if mode not in MODES:
        raise ValueError(f"unknown ONNX mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "classify":
        if image_size is None:
            raise ValueError("mode 'classify' exports one fixed image size: give image_size")
        height, width = image_hw(image_size)
        least = arch.MIN_CLASSIFY_SIZE
        if height < least or width < least:
            raise ValueError(
                f"mode 'classify' needs images of at least {least}x{least} (five 2x2 poolings), "
                f"got {height}x{width}; choose a larger --image-size"
            )
    elif image_size is not None:
        raise ValueError(
            f"mode {mode!r} exports any height and width (symbolic); drop the image size "
            "(it is for mode 'classify')"
        )
    if trained_pool5 is not None and mode == "classify":
        raise ValueError("trained_pool5 is for the dense modes (classify pools to 7x7 already)")
    if path is not None:
        check_output(path)


def usage_metadata(
    preprocessing: Any = None,
    class_names: Sequence[str] | None = None,
    **more: Any,
) -> dict[str, Any]:
    """What a user of the exported file needs: the preprocessing (name and numbers), the class
    names, and any `more` JSON-ready entries (e.g. input_size from a checkpoint's record)."""
    from vgg_flax.preprocessing import get_preset

    found: dict[str, Any] = {}
    if preprocessing is not None:
        found["preprocessing"] = get_preset(preprocessing).to_json()
    if class_names is not None:
        found["class_names"] = list(class_names)
    return found | {key: value for key, value in more.items() if value is not None}


def _traceable(model: Any) -> Any:
    """The model with the standard `lax` kernels (a quantised model: its float model swapped)."""
    from vgg_flax.inference.quantize import QuantizedModel

    if isinstance(model, QuantizedModel):
        return dataclasses.replace(model, model=model.model.clone(kernels="lax"))
    return model.clone(kernels="lax")


def _input_spec(mode: str, image_size: Any, trained_pool5: int | None) -> Any:
    """NHWC float32 with a symbolic batch; symbolic height and width in the dense modes."""
    import jax
    import jax.numpy as jnp

    if mode == "classify":
        height, width = image_hw(image_size)
        (batch,) = jax.export.symbolic_shape("batch")
        return jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
    least = arch.MIN_DENSE_SIZE if trained_pool5 is None else trained_pool5 * arch.NETWORK_STRIDE
    # The constraints let the model's size checks (height >= 224) decide at trace time.
    shape = jax.export.symbolic_shape(
        "batch, height, width, 3", constraints=(f"height >= {least}", f"width >= {least}")
    )
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _quiet_jax2onnx() -> Any:
    """Import jax2onnx with its plugin-loading warnings muted (plugins for libraries we do not
    use, e.g. dm_pix, fail to import against this JAX and are skipped)."""
    logger = logging.getLogger("jax2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import jax2onnx
        from jax2onnx.plugins import plugin_system

        plugin_system.import_all_plugins()
    finally:
        logger.setLevel(level)
    return jax2onnx


def to_onnx(
    model: Any,
    variables: Mapping[str, Any],
    path: str | os.PathLike | None = None,
    *,
    mode: str = "classify",
    image_size: int | Sequence[int] | None = None,
    metadata: Mapping[str, Any] | None = None,
    trained_pool5: int | None = None,
    opset: int = 23,
) -> Any:
    """An `onnx.ModelProto` of `model`'s forward pass in `mode` with `variables` inside.

    `image_size` (classify only, default 224): one side or (height, width), at least 32.
    `metadata`: JSON-ready entries for the file's metadata_props (`usage_metadata`).
    `trained_pool5` (dense modes): pool5's side for a net trained below 224 (as the scorers pass
    it); the file then takes images of at least 32 * trained_pool5. Written to `path` if given.
    """
    import jax
    import jax.numpy as jnp
    import onnx

    from vgg_flax.inference.quantize import QuantizedModel

    if mode == "classify" and image_size is None:
        image_size = arch.MIN_DENSE_SIZE
    quantize = model.mode if isinstance(model, QuantizedModel) else None
    check_options(mode, image_size, trained_pool5, path, quantize)  # before the work
    jax2onnx = _quiet_jax2onnx()
    traced = _traceable(model)
    weights = jax.tree.map(jnp.asarray, variables)
    options: dict[str, Any] = {"mode": mode}
    if trained_pool5 is not None:
        options["trained_pool5"] = trained_pool5

    def forward(images: jax.Array) -> jax.Array:
        return traced.apply(weights, images, **options)

    spec = _input_spec(mode, image_size, trained_pool5)
    logger = logging.getLogger("onnx_ir")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "value type not known" notes on shape constants
    try:
        proto = jax2onnx.to_onnx(
            forward,
            [spec],
            model_name="vgg_flax",
            opset=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
        )
    finally:
        logger.setLevel(level)
    entries = {"vgg_flax.mode": mode, "vgg_flax.input": "NHWC float32, preprocessed"}
    if mode == "classify":
        entries["vgg_flax.image_size"] = list(image_hw(image_size))
    entries |= dict(metadata or {})
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in entries.items()})
    if path is not None:
        size = proto.ByteSize()
        if size > PROTOBUF_LIMIT:
            raise ValueError(f"the model is {size} bytes, over ONNX's 2 GiB single-file limit")
        with atomic_write(path, "wb") as f:
            f.write(proto.SerializeToString())
    return proto


def read_metadata(source: Any) -> dict[str, Any]:
    """The metadata_props of an ONNX file (or ModelProto) written by `to_onnx`, JSON-decoded."""
    import onnx

    proto = source if isinstance(source, onnx.ModelProto) else onnx.load(os.fspath(source))
    return {prop.key: json.loads(prop.value) for prop in proto.metadata_props}
