"""The paper's test protocols (section 3.2; docs/paper.md, Testing) and torchvision's center crop.

Every protocol turns an example into weighted views, each scored by dense evaluation (a 224x224
view has a 1x1 score map, so dense scores equal the classifier's logits there). An example's
posterior is the weighted sum of its views' soft-max posteriors, averaged over the networks of an
ensemble:
- "dense": each scale's whole image (score map averaged, then soft-max) and its horizontal flip;
  scales and flips weigh equally.
- "multicrop": per scale a 5x5 regular grid of 224x224 crops from corner to corner and their
  flips, 50 views per scale, weighing equally.
- "dense+multicrop": the mean of the two posteriors above.
- "center": one view, the 224x224 crop that torchvision's Resize(256) + CenterCrop(224) gives.
Multi-scale is the mean over the scales; an ensemble is the mean over networks.

A network trained on crops smaller than 224 (e.g. 32x32 digits) is evaluated at its own size:
the crops of "multicrop" and "center" are its input size, and its dense evaluation slides fc6
over pool5's map with the window it saw in training (`trained_size.TrainedSizeScorer`), so at
its input size dense evaluation gives exactly the classifier's logits.

This module imports JAX only when it scores (a command line reads `PROTOCOLS` without it).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vgg_flax.models import arch

if TYPE_CHECKING:
    from vgg_flax.evaluate.batching import Scorer

PROTOCOLS = ("dense", "multicrop", "dense+multicrop", "center")
CROP = arch.MIN_DENSE_SIZE  # 224
GRID = 5


def crop_offsets(
    height: int, width: int, size: int = CROP, grid: int = GRID
) -> list[tuple[int, int]]:
    """Top-left corners of a grid x grid regular grid of size x size crops, corner to corner."""
    if size >= CROP:
        from vgg_flax.evaluate.batching import check_dense_size

        check_dense_size(height, width)
    elif height < size or width < size:
        raise ValueError(
            f"an image of {height}x{width} is smaller than the {size}x{size} crops; use test "
            f"scales Q >= {size}"
        )
    rows = np.rint(np.linspace(0, height - size, grid)).astype(int)
    cols = np.rint(np.linspace(0, width - size, grid)).astype(int)
    return [(int(top), int(left)) for top in rows for left in cols]


def multicrops(image: np.ndarray, flips: bool = True, size: int = CROP) -> list[np.ndarray]:
    """The 25 size x size grid crops of one image, each followed by its flip when flips."""
    out = []
    for top, left in crop_offsets(*image.shape[:2], size):
        crop = image[top : top + size, left : left + size]
        out += [crop, crop[:, ::-1]] if flips else [crop]
    return out


def views(
    protocol: str, images: Mapping[int, np.ndarray], flips: bool = True, crop: int = CROP
) -> list[tuple[np.ndarray, float]]:
    """An example's (view, weight) pairs; `images` maps each scale Q to the rescaled image.

    For "center", `images` holds the single center crop (under any key). Multi-crop views are
    crop x crop (the network's input size). Weights sum to one.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not images:
        raise ValueError("an example needs at least one image (one per test scale)")
    if protocol == "center":
        if len(images) != 1:
            raise ValueError(f"'center' takes one image per example, got {len(images)} scales")
        return [(next(iter(images.values())), 1.0)]
    parts = []
    if protocol in ("dense", "dense+multicrop"):
        parts.append([v for im in images.values() for v in ([im, im[:, ::-1]] if flips else [im])])
    if protocol in ("multicrop", "dense+multicrop"):
        parts.append([c for im in images.values() for c in multicrops(im, flips, crop)])
    return [(view, 1.0 / (len(parts) * len(part))) for part in parts for view in part]


def evaluate(
    scorers: Sequence[Scorer],
    examples: Iterable[tuple[Hashable, Mapping[int, np.ndarray]]],
    protocol: str,
    *,
    flips: bool = True,
    batch_size: int = 8,
    align: int = arch.NETWORK_STRIDE,
) -> Iterator[tuple[Hashable, np.ndarray]]:
    """Yield (key, posterior) per example, as soon as all its views are scored (any order).

    `examples` yields (key, {Q: image rescaled to smaller side Q, HxWx3 float32 normalised});
    the posterior is the ensemble's mean over `scorers` of the protocol's weighted posteriors.
    Views of all examples share padded batches (see `batching`), so few shapes are compiled;
    each batch splits evenly over every scorer's `devices` (1 for a scorer without them).
    """
    from vgg_flax.evaluate.batching import ShapeBatcher
    from vgg_flax.evaluate.trained_size import ExactShapeBatcher

    if not scorers:
        raise ValueError("give at least one network (scorer) to evaluate")
    multiple = math.lcm(*(getattr(s, "devices", 1) for s in scorers))
    crop = view_size(scorers)  # networks trained below 224 take unpadded views of their size
    batcher = (ShapeBatcher if crop >= CROP else ExactShapeBatcher)(batch_size, align, multiple)
    pending: dict[Hashable, list] = {}  # key -> [posterior sum, views left]

    def run(batches: list) -> Iterator[tuple[Hashable, np.ndarray]]:
        for batch in batches:
            posteriors = sum(s(batch.images, batch.valid_hw) for s in scorers) / len(scorers)
            for tag, posterior in zip(batch.keys, posteriors, strict=True):
                if tag is None:
                    continue
                key, weight = tag
                entry = pending[key]
                entry[0] = entry[0] + weight * posterior.astype(np.float64)
                entry[1] -= 1
                if entry[1] == 0:
                    del pending[key]
                    yield key, entry[0]

    for key, images in examples:
        if key in pending:
            raise ValueError(f"example key {key!r} appears twice; keys must be unique")
        example_views = views(protocol, images, flips, crop)
        pending[key] = [0.0, len(example_views)]
        for view, weight in example_views:
            yield from run(batcher.add((key, weight), view))
    yield from run(batcher.flush())


def evaluate_arrays(
    scorers: Sequence[Scorer],
    images: Sequence[Mapping[int, np.ndarray]],
    protocol: str,
    **options,
) -> np.ndarray:
    """Posteriors (N, classes) of in-memory examples, in their order; options as `evaluate`."""
    found = dict(evaluate(scorers, enumerate(images), protocol, **options))
    return np.stack([found[index] for index in range(len(images))])


def view_size(scorers: Sequence[Any]) -> int:
    """The size of the networks' crops: their input size when under 224, else 224."""
    sizes = {min(getattr(scorer, "input_size", CROP), CROP) for scorer in scorers}
    if len(sizes) != 1:
        raise ValueError(
            f"the networks were trained at different input sizes {sorted(sizes)}; an ensemble "
            "needs one view size"
        )
    return sizes.pop()


def scorer(model: Any, variables: Mapping[str, Any], input_size: int = CROP) -> Scorer:
    """The scorer of a network trained on `input_size` crops (`TrainedSizeScorer` under 224)."""
    from vgg_flax.evaluate.batching import Scorer
    from vgg_flax.evaluate.trained_size import TrainedSizeScorer

    if input_size >= CROP:
        return Scorer(model, variables)
    return TrainedSizeScorer(model, variables, input_size)
