"""Parity with Keras 3: keras.applications' VGG16/VGG19 and vgg-flax on the same weights.

Keras runs the weights it reads itself (`model.load_weights`, any of the three HDF5 layouts) or
seeded random ones; vgg-flax runs `vgg_flax.formats.keras.from_keras` of the same file (or of
the model's weights). Every Keras layer output is compared with the activation of the same
place: block{B}_conv{I} -> relu{B}_{I} (Keras's Conv2D applies the ReLU), block{B}_pool ->
pool{B}, fc1 -> relu6, fc2 -> relu7, predictions -> logits (or their softmax). Inputs are BGR,
0-255, minus the mean pixel (preset "caffe"). Keras uses its JAX backend unless KERAS_BACKEND
already names another; needs the `keras` package.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import numpy as np

from vgg_flax.formats.keras import KERAS_ARCHS, from_keras
from vgg_flax.parity.torchvision import ParityReport, difference

# vgg-flax's torchvision-style names of the two networks keras.applications ships.
KERAS_NETWORKS = {"vgg16": "VGG16", "vgg19": "VGG19"}
_CONV = re.compile(r"block(\d+)_conv(\d+)$")
_POOL = re.compile(r"block(\d+)_pool$")
_HEAD = {"fc1": "relu6", "fc2": "relu7", "predictions": "logits"}


def import_keras() -> Any:
    """`keras`, on its JAX backend unless KERAS_BACKEND (or an earlier import) chose another."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    return keras


def keras_model(
    network: str = "vgg16",
    weights: str | os.PathLike | None = None,
    *,
    include_top: bool = True,
    input_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> Any:
    """keras.applications' `network` ("vgg16"/"vgg19") with logits out (no softmax).

    `weights`: an HDF5 file Keras loads itself; None: Keras's seeded initialisation with seeded
    random biases (zero there), so that every part of the conversion is exercised.
    """
    if network not in KERAS_NETWORKS:
        raise ValueError(f"keras.applications has no {network!r}; choose vgg16 or vgg19")
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        # Keras seeds TensorFlow's global RNG too. Our weights need only Keras's own generator,
        # and a global seed of 0 breaks every later tf.data shuffle with a tensor seed in this
        # process (TensorFlow compares the seed pair with (0, 0) in Python).
        tf.random.set_seed(None)
    build = getattr(keras.applications, KERAS_NETWORKS[network])
    model = build(
        weights=None,
        include_top=include_top,
        input_shape=input_shape,
        classifier_activation=None,
    )
    if weights is not None:
        model.load_weights(os.fspath(weights))
        return model
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.uniform(-0.1, 0.1, bias.shape).astype(bias.dtype)])
    return model


def keras_layers(model: Any) -> dict[str, list[np.ndarray]]:
    """Layer name -> weights (numpy) of a Keras model, as `from_keras` takes them."""
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def compare_keras(model: Any, images: np.ndarray, variables: Any = None) -> ParityReport:
    """Run Keras `model` and vgg-flax on NHWC `images` (already preprocessed, BGR); compare.

    `variables` default to `from_keras` of the model's own weights; pass `from_keras(file)` to
    check a file's conversion against Keras's reading of the same file.
    """
    import jax

    from vgg_flax.weights.loading import model_for

    keras = import_keras()
    variables = variables if variables is not None else from_keras(keras_layers(model))
    ours_model = model_for(variables, dropout_rate=0.0)
    names = {layer.name: _our_name(layer.name) for layer in model.layers}
    names = {theirs: ours for theirs, ours in names.items() if ours}
    probe = keras.Model(model.inputs[0], [model.get_layer(name).output for name in names])
    with jax.default_matmul_precision("float32"):
        theirs = [keras.ops.convert_to_numpy(out) for out in probe(images)]
        ours = ours_model.apply(variables, images, features=tuple(names.values()))
    ours = {key: np.asarray(value) for key, value in ours.items()}
    rows = []
    for (keras_name, name), their in zip(names.items(), theirs, strict=True):
        mine = ours[name]
        activation = getattr(model.get_layer(keras_name), "activation", None)
        if name == "logits" and getattr(activation, "__name__", "") == "softmax":
            mine = np.asarray(jax.nn.softmax(mine, axis=-1))
        rows.append(difference(name, mine, their))
    agree = 1.0
    if "logits" in ours:
        agree = float(np.mean(ours["logits"].argmax(-1) == theirs[-1].argmax(-1)))
    arch = {v: k for k, v in KERAS_ARCHS.items()}.get(str(ours_model.arch), "VGG")
    return ParityReport(arch, rows, agree)


def _our_name(name: str) -> str | None:
    if match := _CONV.match(name):
        return f"relu{match[1]}_{match[2]}"
    if match := _POOL.match(name):
        return f"pool{match[1]}"
    return _HEAD.get(name)


def run_parity(
    network: str,
    weights: str | os.PathLike | None,
    size: tuple[int, int],
    batch: int = 2,
    seed: int = 0,
) -> int:
    """`vgg-flax parity NETWORK --keras [H5]`: print the table; 1 if any layer is off by > 1e-4.

    Random RGB images go through preset "caffe"; a file with its classifier needs 224x224.
    """
    from vgg_flax.preprocessing import preprocess

    variables = from_keras(weights) if weights is not None else None
    include_top = variables is None or "fc8" in variables["params"]
    if include_top and tuple(size) != (224, 224):
        raise ValueError(f"Keras's {network} with its classifier takes 224x224, not {size}")
    shape = (*size, 3) if include_top else None
    model = keras_model(network, weights, include_top=include_top, input_shape=shape, seed=seed)
    rgb = np.random.default_rng(seed).random((batch, *size, 3), np.float32)
    report = compare_keras(model, preprocess(rgb, "caffe"), variables)
    print(f"{network} vs Keras {keras_version()}: inputs {(batch, *size, 3)} (NHWC, BGR)")
    print(f"{'activation':<32} {'max |diff|':>12} {'relative':>12}")
    for row in report.activations:
        print(f"{row.name:<32} {row.max_abs:12.3e} {row.max_rel:12.3e}")
    if include_top:
        print(f"top-1 agreement: {report.top1_agreement:.1%}")
    return int(report.worst().max_rel > 1e-4)


def keras_version() -> str:
    """Keras's version and backend, e.g. "3.15.1 (jax)"."""
    keras = import_keras()
    return f"{keras.__version__} ({keras.backend.backend()})"
