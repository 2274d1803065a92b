"""Batches of images of many sizes, padded into a bounded set of shapes, and their scorer.

Validation images come in many sizes. Compiling the network once per size would dominate the run,
so each image is zero-padded at the bottom and right up to the next multiple of `align` (32, the
network's stride, by default) on each side, and images of the same padded shape share a batch.
The model's `valid_hw` hook zeroes padded positions after every layer and averages only the valid
score positions, so a padded image scores exactly as it would alone at its own size.
A shape's batch size depends only on the shape, so each padded shape compiles once.

A `Scorer` splits every batch over the devices of a mesh (default: this host's), so each device
scores its share of the rows; batches are made a multiple of the device count for that. Across
hosts nothing is exchanged while scoring: each host scores its own images (see `runner`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vgg_flax import parallel
from vgg_flax.models import arch


def check_dense_size(height: int, width: int) -> None:
    """Raise ValueError when an image is too small for dense evaluation (under 224 on a side)."""
    least = arch.MIN_DENSE_SIZE
    if height < least or width < least:
        raise ValueError(
            f"an image of {height}x{width} cannot be evaluated densely: fc6's 7x7 window needs "
            f"at least {least}x{least} pixels (a 7x7 pool5 map); use test scales Q >= {least}"
        )


def padded_shape(height: int, width: int, align: int = arch.NETWORK_STRIDE) -> tuple[int, int]:
    """The padded (height, width) an image joins: each side rounded up to a multiple of align."""
    if align < 1 or align % arch.NETWORK_STRIDE:
        raise ValueError(
            f"align={align} must be a positive multiple of the network stride "
            f"{arch.NETWORK_STRIDE}, so that padding never shifts a pooling window"
        )
    return (math.ceil(height / align) * align, math.ceil(width / align) * align)


def batch_rows(shape: tuple[int, int], batch_size: int, multiple: int = 1) -> int:
    """Images per batch for a padded shape: batch_size at 224x224, fewer for larger shapes.

    Keeping pixels per batch about constant bounds memory for the largest images; the result
    depends on the shape alone, so each shape compiles once. It is rounded up to a multiple of
    `multiple` (the devices a batch is split over), so that every device gets rows.
    """
    pixels = arch.MIN_DENSE_SIZE**2 * batch_size
    rows = max(1, min(batch_size, pixels // (shape[0] * shape[1])))
    return -(-rows // multiple) * multiple


def count_shapes(
    sizes: Iterable[tuple[int, int]], scale_q: int, align: int = arch.NETWORK_STRIDE
) -> int:
    """How many padded shapes images of the given (height, width) fill when rescaled to Q.

    The rescale is the data pipeline's (smaller side Q, longer side floored, as torchvision's
    Resize); use it to predict compile counts for a dataset's size distribution.
    """
    shapes = set()
    for height, width in sizes:
        short = min(height, width)
        scaled = (height * scale_q // short, width * scale_q // short)
        shapes.add(padded_shape(*scaled, align))
    return len(shapes)


@dataclass(frozen=True)
class Batch:
    """A padded batch: `keys[i]` is None for filler rows that only complete the batch."""

    keys: tuple[Hashable | None, ...]
    images: np.ndarray  # (B, H, W, 3) float32, zero-padded at the bottom and right
    valid_hw: np.ndarray  # (B, 2) int32, each row's true size


class ShapeBatcher:
    """Groups images into padded batches by padded shape; `add` and `flush` return full batches.

    Every batch's row count is a multiple of `multiple` (see `batch_rows`).
    """

    def __init__(self, batch_size: int = 8, align: int = arch.NETWORK_STRIDE, multiple: int = 1):
        if batch_size < 1 or multiple < 1:
            raise ValueError(
                f"batch_size and multiple must be at least 1, got {batch_size} and {multiple}"
            )
        padded_shape(arch.MIN_DENSE_SIZE, arch.MIN_DENSE_SIZE, align)  # validates align
        self.batch_size = batch_size
        self.align = align
        self.multiple = multiple
        self._pending: dict[tuple[int, int], list[tuple[Hashable, np.ndarray]]] = {}

    def add(self, key: Hashable, image: np.ndarray) -> list[Batch]:
        """Queue one (H, W, 3) image; return the batch it completes, if any."""
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected one image of shape (H, W, 3), got {image.shape}")
        check_dense_size(*image.shape[:2])
        shape = padded_shape(*image.shape[:2], self.align)
        queue = self._pending.setdefault(shape, [])
        queue.append((key, image))
        if len(queue) < batch_rows(shape, self.batch_size, self.multiple):
            return []
        del self._pending[shape]
        return [_assemble(shape, queue, len(queue))]

    def flush(self) -> list[Batch]:
        """Every partly filled batch, completed with filler rows to its shape's batch size."""
        batches = [
            _assemble(shape, queue, batch_rows(shape, self.batch_size, self.multiple))
            for shape, queue in self._pending.items()
        ]
        self._pending = {}
        return batches


def _assemble(shape: tuple[int, int], queue: list, rows: int) -> Batch:
    images = np.zeros((rows, *shape, 3), np.float32)
    # Filler rows claim the whole padded shape so the masked mean never divides by zero.
    valid = np.tile(np.array(shape, np.int32), (rows, 1))
    for row, (_, image) in enumerate(queue):
        height, width = image.shape[:2]
        images[row, :height, :width] = image
        valid[row] = (height, width)
    keys = tuple(key for key, _ in queue) + (None,) * (rows - len(queue))
    return Batch(keys, images, valid)


class Scorer:
    """One network's soft-max posteriors of dense evaluation on padded batches, jitted.

    The rows of each batch are split over the "data" axis of `mesh` (default: every device of
    this host, `parallel.local_mesh`) and the variables are replicated there once; a batch
    whose rows do not split evenly gets filler rows, dropped from the result. `devices` says
    how many devices share a batch (`ShapeBatcher`'s `multiple`). `shapes` records every
    (batch, height, width) it was called with: each is one compilation. The variables are
    passed to the jitted function as an argument, not baked into the program.
    """

    def __init__(self, model: Any, variables: Mapping[str, Any], mesh: Mesh | None = None):
        self.model = model
        self.mesh = parallel.local_mesh() if mesh is None else mesh
        if not all(d.process_index == jax.process_index() for d in self.mesh.devices.flat):
            raise ValueError(
                "a Scorer's mesh must hold only this host's devices (each host scores its own "
                "images); use parallel.local_mesh()"
            )
        self.variables = jax.device_put(variables, parallel.replicated(self.mesh))
        self.shapes: set[tuple[int, int, int]] = set()
        rows = parallel.batch_sharding(self.mesh)
        self._posteriors: Callable = jax.jit(
            self._forward,
            in_shardings=(parallel.replicated(self.mesh), rows, rows),
            out_shardings=rows,
        )

    @property
    def devices(self) -> int:
        """How many devices each batch is split over."""
        return self.mesh.devices.size

    def _forward(self, variables: Any, images: jax.Array, valid_hw: jax.Array) -> jax.Array:
        scores = self.model.apply(variables, images, mode="dense", valid_hw=valid_hw)
        return jax.nn.softmax(scores.astype(jnp.float32), axis=-1)

    def __call__(self, images: np.ndarray, valid_hw: np.ndarray) -> np.ndarray:
        """Posteriors (B, classes) of a padded batch; `valid_hw` (B, 2) gives the true sizes."""
        count = len(images)
        extra = -count % self.devices
        if extra:  # filler rows as ShapeBatcher makes them: zeros, the whole shape valid
            images = np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)])
            filler = np.tile(np.asarray(images.shape[1:3], np.int32), (extra, 1))
            valid_hw = np.concatenate([np.asarray(valid_hw, np.int32), filler])
        self.shapes.add(tuple(images.shape[:3]))
        return np.asarray(self._posteriors(self.variables, images, valid_hw))[:count]
