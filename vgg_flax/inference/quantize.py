"""Post-training int8 quantisation of a VGG with Qwix: weight-only, or weights and activations.

Two modes (`MODES`), both per-output-channel symmetric int8 weights (Qwix's absmax calibration)
for every convolution and classifier layer (BatchNorm, biases and the poolings stay float32):

- "int8-weights": the kernels are stored as int8 with one float32 scale per output channel and
  dequantised when the network runs; the computation is the float model's (its fast CPU
  kernels included) on the rounded weights. The stored weights are 4x smaller.
- "int8": also the input of every convolution is quantised to int8 with one static float32
  scale per layer, calibrated post-training on a few images (`calibration_images`: the largest
  |activation| seen there, Qwix's "absmax"); each layer is an int8 x int8 convolution
  accumulated in int32 (`qwix.conv_general_dilated`), rescaled to float32.

`quantize(model, variables, mode, calibration)` returns `(QuantizedModel, quantized
variables)`; the model's `apply` takes the quantised variables and the float model's arguments
(any mode: "classify", "dense", "dense_map", valid_hw, trained_pool5), so the scorers of
`vgg_flax.evaluate`, `vgg_flax.inference.prediction` and the exports take it unchanged.

In mode "int8" each convolution is computed here (a Flax method interceptor on the model's
`Conv` layers), not by the model's own kernels: fc6's adaptive pooling (classify) is applied to
its input before quantising it, and a kernel folded for a net trained below 224 (dense modes) is
folded in float32 and quantised again per output channel.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

MODES = ("int8", "int8-weights")
# The modes whose activation scales come from calibration images.
CALIBRATED = ("int8",)
INPUT_SCALE = "input_scale"  # collection "quant": {layer: {INPUT_SCALE: scalar}}


def check_mode(mode: str, calibration: Any = None) -> None:
    """Refuse an unknown mode, or a calibrated mode without calibration images (before work)."""
    if mode not in MODES:
        raise ValueError(f"unknown quantisation {mode!r}; choose one of {', '.join(MODES)}")
    if mode in CALIBRATED and calibration is None:
        raise ValueError(
            f"quantisation {mode!r} quantises activations with scales calibrated on images: "
            "give a folder of images (--calibrate DIR), or use 'int8-weights' (weights only, "
            "no calibration)"
        )


def check_calibration_folder(folder: str | os.PathLike) -> list[str]:
    """The image files of a calibration folder; a clear error when there are none."""
    from vgg_flax.inference.prediction import image_files

    if not os.path.isdir(folder):
        raise ValueError(f"--calibrate {folder}: not a folder (give a folder of images)")
    return image_files([folder])


def calibration_images(
    folder: str | os.PathLike,
    preprocessing: Any = "torchvision",
    input_size: int = 224,
    limit: int | None = 256,
) -> np.ndarray:
    """Preprocessed (N, input_size, input_size, 3) float32 crops of a folder's images.

    Each image is resized (smaller side 256 * input_size / 224, torchvision's ratio) and
    center-cropped to `input_size`, as the "center" protocol reads it; at most `limit` images
    (sorted by name) are used.
    """
    from vgg_flax.inference.prediction import load_views
    from vgg_flax.preprocessing import CROP_SIZE, TORCHVISION_RESIZE

    files = check_calibration_folder(folder)[:limit]
    scale = max(input_size, round(TORCHVISION_RESIZE * input_size / CROP_SIZE))
    views = [load_views(f, "center", [scale], preprocessing, input_size)[scale] for f in files]
    return np.stack(views)


def _conv_layers(params: Mapping[str, Any]) -> list[str]:
    # The convolution and classifier layers: those with an HWIO kernel (BatchNorm has "scale").
    return [n for n, leaves in params.items() if getattr(leaves.get("kernel"), "ndim", 0) == 4]


def _quantize_kernel(kernel: Any) -> Any:
    """Qwix's per-output-channel symmetric int8 QArray of an HWIO kernel."""
    import jax.numpy as jnp
    import qwix

    return qwix.quantize(jnp.asarray(kernel, jnp.float32), jnp.int8, channelwise_axes=(3,))


def quantize_weights(variables: Mapping[str, Any]) -> dict[str, Any]:
    """`variables` with every kernel as {"kernel": int8, "kernel_scale": (1, 1, 1, D) float32}."""
    params = dict(variables["params"])
    for name in _conv_layers(params):
        q = _quantize_kernel(params[name]["kernel"])
        params[name] = {**params[name], "kernel": q.qvalue, "kernel_scale": q.scale}
    return {**variables, "params": params}


def dequantize_weights(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The float32 variables the quantised ones stand for (kernel = int8 value * scale)."""
    import jax.numpy as jnp

    params = {}
    for name, leaves in variables["params"].items():
        if "kernel_scale" in leaves:
            leaves = dict(leaves)
            scale = leaves.pop("kernel_scale")
            leaves["kernel"] = leaves["kernel"].astype(jnp.float32) * scale
        params[name] = leaves
    return {k: v for k, v in variables.items() if k != "quant"} | {"params": params}


def _conv_input(x: Any, pool_to: Any) -> Any:
    """The array a `Conv` layer's kernel meets: x, adaptively pooled first when asked."""
    from vgg_flax.models.layers import adaptive_avg_pool

    return x if pool_to is None else adaptive_avg_pool(x, pool_to)


def _is_conv(context: Any) -> bool:
    from vgg_flax.models.ops import Conv

    return isinstance(context.module, Conv) and context.method_name == "__call__"


def _record_absmax(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    """Interceptor: sow each Conv input's largest |value| (collection "absmax"), run as usual."""
    import jax.numpy as jnp

    if _is_conv(context):
        x, pool_to = args[0], kwargs.get("pool_to", args[1] if len(args) > 1 else None)
        seen = jnp.max(jnp.abs(_conv_input(x, pool_to)))
        context.module.sow("absmax", INPUT_SCALE, seen, reduce_fn=jnp.maximum, init_fn=lambda: 0.0)
    return next_fun(*args, **kwargs)


def _int8_conv(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    """Interceptor: a Conv layer as int8 x int8 -> int32 (Qwix), with its static input scale."""
    import jax.numpy as jnp
    import qwix
    from jax import lax
    from qwix._src.core import qarray

    from vgg_flax.models.layers import fold_adaptive_pool

    if not _is_conv(context):
        return next_fun(*args, **kwargs)
    module = context.module
    names = ("x", "pool_to", "pooled_from")
    call = dict(zip(names, args, strict=False)) | kwargs
    x = _conv_input(call["x"], call.get("pool_to"))
    kernel_q = module.get_variable("params", "kernel")
    kernel_scale = module.get_variable("params", "kernel_scale")
    bias = module.get_variable("params", "bias")
    weights = qwix.QArray(kernel_q, kernel_scale, qtype=jnp.int8)
    if call.get("pooled_from") is not None:
        # The kernel a net trained below 224 slides over pool5: folded in float32, re-quantised.
        float_kernel = kernel_q.astype(jnp.float32) * kernel_scale
        weights = _quantize_kernel(fold_adaptive_pool(float_kernel, call["pooled_from"]))
    scale = module.get_variable("quant", INPUT_SCALE)
    inputs = qarray.quantize_with_scale_zero_point(
        x.astype(jnp.float32), jnp.int8, jnp.reshape(scale, (1, 1, 1, 1)), None
    )
    pad = module.padding
    out = qwix.conv_general_dilated(
        inputs,
        weights,
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=lax.conv_dimension_numbers(
            x.shape, weights.qvalue.shape, ("NHWC", "HWIO", "NHWC")
        ),
    )  # int8 x int8 accumulated in int32, rescaled to the scales' float32 (Qwix's choice)
    return out + bias


def calibrate(
    model: Any, variables: Mapping[str, Any], images: np.ndarray, batch_size: int = 16
) -> dict[str, Any]:
    """{layer: {"input_scale": float32}}: each Conv input's largest |value| over `images` / 127.

    The float model runs in classify mode on the (N, H, W, 3) preprocessed images; the largest
    absolute value of every convolution's input (after fc6's adaptive pooling) is Qwix's
    "absmax" calibration, and its symmetric int8 scale is absmax / 127.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from qwix._src.core import qarray

    if len(images) == 0:
        raise ValueError("no calibration images")

    @jax.jit
    def absmax(variables: Mapping[str, Any], batch: jax.Array) -> Any:
        # The variables an argument, not closed over: XLA would fold the whole net in as
        # constants (seconds of compile for a VGG-16).
        with nn.intercept_methods(_record_absmax):
            _, state = model.apply(variables, batch, mutable=["absmax"])
        return state["absmax"]

    seen: Any = None
    for start in range(0, len(images), batch_size):
        found = absmax(variables, jnp.asarray(images[start : start + batch_size]))
        seen = found if seen is None else jax.tree.map(jnp.maximum, seen, found)
    return {
        layer: {
            INPUT_SCALE: qarray.compute_scale_zero_point({"absmax": leaves[INPUT_SCALE]}, jnp.int8)[
                0
            ].astype(jnp.float32)
        }
        for layer, leaves in jax.device_get(seen).items()
    }


@dataclasses.dataclass(frozen=True)
class QuantizedModel:
    """A VGG whose `apply` takes `quantize`'s variables; other attributes are the float model's.

    `apply(variables, images, train=False, **options)` accepts the float model's options (mode,
    valid_hw, trained_pool5, ...); only inference (train=False) is quantised.
    """

    model: Any
    mode: str

    def apply(
        self, variables: Mapping[str, Any], images: Any, train: bool = False, **options: Any
    ) -> Any:
        """The quantised forward pass (see the module docstring)."""
        import flax.linen as nn

        if train:
            raise ValueError("a quantised model runs inference only (train=False)")
        if self.mode == "int8-weights":
            return self.model.apply(dequantize_weights(variables), images, **options)
        with nn.intercept_methods(_int8_conv):
            return self.model.apply(variables, images, **options)

    def __getattr__(self, name: str) -> Any:
        # num_classes, arch, ...: what callers read from the float model.
        return getattr(self.model, name)


def quantize(
    model: Any,
    variables: Mapping[str, Any],
    mode: str = "int8",
    calibration: np.ndarray | None = None,
) -> tuple[QuantizedModel, dict[str, Any]]:
    """(quantised model, its variables) of a float VGG; see the module docstring.

    `calibration`: preprocessed (N, H, W, 3) images (`calibration_images`), needed by "int8".
    """
    check_mode(mode, calibration)
    if isinstance(model, QuantizedModel):
        raise ValueError(f"the model is quantised already ({model.mode})")
    quantized = quantize_weights(variables)
    if mode in CALIBRATED:
        quantized["quant"] = calibrate(model, variables, np.asarray(calibration, np.float32))
    return QuantizedModel(model, mode), quantized


def quantize_source(
    model: Any,
    variables: Mapping[str, Any],
    mode: str,
    folder: str | None,
    preprocessing: Any = "torchvision",
    input_size: int = 224,
) -> tuple[QuantizedModel, dict[str, Any]]:
    """`quantize` with the calibration images read from `folder` (the CLIs' --calibrate)."""
    check_mode(mode, folder)
    images = None
    if mode in CALIBRATED:
        images = calibration_images(folder, preprocessing, input_size)
    return quantize(model, variables, mode, images)


def stored_bytes(variables: Mapping[str, Any]) -> int:
    """Bytes of the arrays in a variables tree (int8 kernels count one byte a weight)."""
    import jax

    return sum(int(np.asarray(leaf).nbytes) for leaf in jax.tree.leaves(variables))


def layers_quantized(variables: Mapping[str, Any]) -> Sequence[str]:
    """The layers whose kernels are int8 in quantised variables."""
    return [n for n, leaves in variables["params"].items() if "kernel_scale" in leaves]


def quantized_network(
    network: Any, input_size: int | None, mode: str, folder: str | None, preprocessing: Any
) -> Any:
    """`vgg_flax.evaluate.runner.load_network`'s scorer of loaded weights (`vgg_flax.load`'s
    `(model, variables, usage)`), quantised first; calibration images read with `preprocessing`."""
    from vgg_flax.evaluate.protocols import scorer

    size = input_size or network.usage.input_size
    model, variables = quantize_source(
        network.model, network.variables, mode, folder, preprocessing, size
    )
    return scorer(model, variables, size)
