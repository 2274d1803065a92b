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
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from vgg_flax import arch
from vgg_flax.evaluate.batching import Scorer, ShapeBatcher, check_dense_size

PROTOCOLS = ("dense", "multicrop", "dense+multicrop", "center")
CROP = arch.MIN_DENSE_SIZE  # 224
GRID = 5


def crop_offsets(
    height: int, width: int, size: int = CROP, grid: int = GRID
) -> list[tuple[int, int]]:
    """Top-left corners of a grid x grid regular grid of size x size crops, corner to corner."""
    check_dense_size(height, width)
    rows = np.rint(np.linspace(0, height - size, grid)).astype(int)
    cols = np.rint(np.linspace(0, width - size, grid)).astype(int)
    return [(int(top), int(left)) for top in rows for left in cols]


def multicrops(image: np.ndarray, flips: bool = True) -> list[np.ndarray]:
    """The 25 grid crops of one image, each followed by its flip when flips (50 in all)."""
    out = []
    for top, left in crop_offsets(*image.shape[:2]):
        crop = image[top : top + CROP, left : left + CROP]
        out += [crop, crop[:, ::-1]] if flips else [crop]
    return out


def views(
    protocol: str, images: Mapping[int, np.ndarray], flips: bool = True
) -> list[tuple[np.ndarray, float]]:
    """An example's (view, weight) pairs; `images` maps each scale Q to the rescaled image.

    For "center", `images` holds the single center crop (under any key). Weights sum to one.
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
        parts.append([crop for im in images.values() for crop in multicrops(im, flips)])
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
    Views of all examples share padded batches (see `batching`), so few shapes are compiled.
    """
    if not scorers:
        raise ValueError("give at least one network (scorer) to evaluate")
    batcher = ShapeBatcher(batch_size, align)
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
        example_views = views(protocol, images, flips)
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
