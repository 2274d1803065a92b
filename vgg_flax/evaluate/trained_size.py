"""Networks trained on crops smaller than 224: their scorer and unpadded batches of their views.

A net trained on 32x32 digits has a 1x1 pool5 map; its classifier averaged that map up to 7x7
(adaptive pooling) before fc6's 7x7 window. Dense evaluation (section 3.2) at that net's own
size folds the pooling into fc6 (`TrainedSizeScorer`); padding, which needs the dense mode's
224x224 masks, is replaced by batching views of one exact shape (`ExactShapeBatcher`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vgg_flax.evaluate.batching import Batch, Scorer, ShapeBatcher, _assemble, batch_rows
from vgg_flax.models import arch

CROP = arch.MIN_DENSE_SIZE


class ExactShapeBatcher(ShapeBatcher):
    """Batches of views of one exact shape, unpadded: for networks trained below 224.

    Padding needs dense evaluation's masks, which need 224x224 inputs; the small views of one
    dataset mostly share a few sizes, so grouping them by exact shape compiles few shapes too.
    `flush` is ShapeBatcher's: filler rows complete each exact shape's last batch.
    """

    def add(self, key: Hashable, image: np.ndarray) -> list[Batch]:
        """Queue one (H, W, 3) image; return the batch it completes, if any."""
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected one image of shape (H, W, 3), got {image.shape}")
        shape = tuple(image.shape[:2])
        queue = self._pending.setdefault(shape, [])
        queue.append((key, image))
        if len(queue) < batch_rows(shape, self.batch_size, self.multiple):
            return []
        del self._pending[shape]
        return [_assemble(shape, queue, len(queue))]  # exact shape: nothing padded


class TrainedSizeScorer(Scorer):
    """Posteriors of a network trained on `input_size` crops under 224 (pool5 map p x p, p < 7).

    In training its classifier averaged pool5's p x p map up to 7x7 (adaptive pooling) before
    fc6's 7x7 window: one linear map, so here fc6 is folded into a p x p window (the fully
    convolutional net of section 3.2 at the trained size). A view whose pool5 map is p x p is
    scored by the classifier itself; a larger one by sliding the folded fc6 over its pool5 map
    and averaging the class scores, as dense evaluation does. Views come unpadded, one exact
    shape per batch (`ExactShapeBatcher`), so `valid_hw` is not needed.
    """

    def __init__(self, model: Any, variables: Mapping[str, Any], input_size: int, **options: Any):
        self.input_size = int(input_size)
        self.side = self.input_size // arch.NETWORK_STRIDE
        if not 1 <= self.side < arch.HEAD_INPUT_SIZE:
            raise ValueError(
                f"input size {input_size} is not between {arch.MIN_CLASSIFY_SIZE} and "
                f"{CROP - 1}; larger networks take the standard dense evaluation (Scorer)"
            )
        super().__init__(model, variables, **options)

    def _forward(self, variables: Any, images: jax.Array, valid_hw: jax.Array) -> jax.Array:
        height, width = images.shape[1:3]  # static: one compiled program per shape
        if (height // arch.NETWORK_STRIDE, width // arch.NETWORK_STRIDE) == (self.side,) * 2:
            scores = self.model.apply(variables, images)  # the classifier, as in training
        else:
            # fc6 folded with the pooling into a p x p window, slid over pool5; scores averaged.
            scores = self.model.apply(variables, images, mode="dense", trained_pool5=self.side)
        return jax.nn.softmax(scores.astype(jnp.float32), axis=-1)

    def __call__(self, images: np.ndarray, valid_hw: np.ndarray) -> np.ndarray:
        """Posteriors (B, classes) of a batch of unpadded views of one shape."""
        height, width = images.shape[1:3]
        if height < self.input_size or width < self.input_size:
            raise ValueError(
                f"views of {height}x{width} are smaller than the {self.input_size}x"
                f"{self.input_size} input this network was trained at; use test scales Q >= "
                f"{self.input_size}"
            )
        return super().__call__(images, valid_hw)
