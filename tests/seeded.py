"""Seeded random variables for the tests' nets, drawn with NumPy from their shapes.

No init program is compiled (JAX's random numbers would compile one per shape). He-scaled kernels
keep activations near unit size through the layers (the paper's N(0, 0.01) shrinks them ~100x
per layer, to logits where rounding hides errors); biases and BatchNorm's statistics are random
too, so every part of the forward pass is exercised.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def he_variables(shapes: Any, seed: int = 0) -> Any:
    """A tree like `shapes` (arrays or ShapeDtypeStructs): He-scaled normal kernels, BatchNorm
    variances and scales in [0.5, 1.5], normal biases and means of std 0.1; float32."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            scale = np.float32(np.sqrt(2 / np.prod(shape[:-1])))
            return rng.standard_normal(shape, np.float32) * scale
        if name in ("var", "scale"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return rng.normal(0, 0.1, shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def model_variables(model: Any, side: int = 32, seed: int = 0) -> Any:
    """`he_variables` of a Linen `model`'s variables for side x side inputs."""
    images = np.zeros((1, side, side, 3), np.float32)
    return he_variables(jax.eval_shape(model.init, jax.random.key(0), images), seed)
