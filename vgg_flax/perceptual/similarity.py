"""Image quality of distorted images against references: pairs, reading, and the scores.

The library side of `vgg-flax similarity`. Pairs are two files, or two folders matched by
relative path (every image under the reference folder, recursively, needs its namesake under
the distorted one). `Scorer` holds one frozen VGG-16 trunk for every metric:

- "lpips" (v0.1) and "lpips-v0.0": `load_lpips(version)(reference, distorted, normalize=True)`;
- "dists": `load_dists()(reference, distorted)`;
- "content" and "style": Johnson et al.'s content (relu2_2) and style (Gram) distances of the
  distorted image to the reference (`perceptual_loss("johnson")`'s parts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from vgg_flax.inference.prediction import IMAGE_SUFFIXES
from vgg_flax.perceptual import frozen

METRICS = ("lpips", "lpips-v0.0", "dists", "content", "style")
SIZES = ("refuse", "resize")


def image_pairs(reference: str, distorted: str) -> list[tuple[str, str, str]]:
    """`(name, reference_path, distorted_path)` of two files, or two folders by relative path.

    A reference image without its distorted namesake is an error naming the missing files.
    """
    if os.path.isfile(reference) and os.path.isfile(distorted):
        return [(os.path.basename(reference), reference, distorted)]
    for path in (reference, distorted):
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such file or folder")
    if not (os.path.isdir(reference) and os.path.isdir(distorted)):
        raise ValueError(
            f"{reference} and {distorted}: give two image files or two folders, not one of each"
        )
    names = sorted(
        os.path.relpath(os.path.join(root, file), reference)
        for root, _, files in os.walk(reference)
        for file in files
        if file.lower().endswith(IMAGE_SUFFIXES)
    )
    if not names:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {reference}")
    missing = [name for name in names if not os.path.isfile(os.path.join(distorted, name))]
    if missing:
        shown = ", ".join(os.path.join(distorted, name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(
            f"missing pair: no distorted image {shown}{more} for the reference images of the "
            f"same relative path under {reference}"
        )
    return [(name, os.path.join(reference, name), os.path.join(distorted, name)) for name in names]


def read_image(path: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as float32 RGB in [0, 1], (H, W, 3); resized (bicubic) to `size` (H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as file:
            image = file.convert("RGB")
    except OSError as error:
        raise ValueError(f"{path}: not an image PIL can read ({error})") from error
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.BICUBIC)
    return np.asarray(image, np.float32) / 255


def read_pair(reference: str, distorted: str, sizes: str = "refuse") -> tuple[np.ndarray, ...]:
    """Both images of a pair; a distorted image of another size resized or refused (`sizes`)."""
    if sizes not in SIZES:
        raise ValueError(f"unknown sizes option {sizes!r}; choose one of {', '.join(SIZES)}")
    ref = read_image(reference)
    dist = read_image(distorted)
    if dist.shape != ref.shape:
        if sizes == "refuse":
            raise ValueError(
                f"{distorted} is {dist.shape[1]}x{dist.shape[0]} but its reference {reference} "
                f"is {ref.shape[1]}x{ref.shape[0]}; resize one, or pass --sizes resize"
            )
        dist = read_image(distorted, ref.shape[:2])
    return ref, dist


class Scorer:
    """The chosen `metrics` (names of `METRICS`) on one trunk; `scorer(ref, dist)` scores a batch.

    `trunk`: as `load_lpips` takes it (torchvision's vgg16 by default). `heatmaps`: also build
    the spatial LPIPS map (`heatmap`), of the first LPIPS version among `metrics` (v0.1 if none).
    """

    def __init__(
        self, metrics: Sequence[str], trunk: Any = None, *, heatmaps: bool = False
    ) -> None:
        from vgg_flax.perceptual.dists import load_dists
        from vgg_flax.perceptual.losses import perceptual_loss
        from vgg_flax.perceptual.lpips import load_lpips

        unknown = [name for name in metrics if name not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
        self.metrics = tuple(dict.fromkeys(metrics))
        trunk = frozen.resolve_trunk(trunk, "vgg16")  # loaded once, shared by every metric
        self._lpips = {}
        for name in self.metrics:
            if name.startswith("lpips"):
                self._lpips[name] = load_lpips(
                    "0.0" if name == "lpips-v0.0" else "0.1", trunk=trunk
                )
        self._heatmap = None
        if heatmaps:
            first = next(iter(self._lpips.values()), None)
            self._heatmap = first or load_lpips("0.1", trunk=trunk)
        self._dists = load_dists(trunk=trunk) if "dists" in self.metrics else None
        wants_loss = {"content", "style"} & set(self.metrics)
        self._loss = perceptual_loss("johnson", trunk=trunk) if wants_loss else None
        self._parts = jax.jit(lambda loss, x, y: loss(x, content=y, style=y)[1])

    def __call__(self, reference: np.ndarray, distorted: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric's score per pair, (N,) float arrays, of NHWC [0, 1] batches."""
        scores = {}
        parts = self._parts(self._loss, distorted, reference) if self._loss is not None else {}
        for name in self.metrics:
            if name in self._lpips:
                value = self._lpips[name](reference, distorted, normalize=True)
            elif name == "dists":
                value = self._dists(reference, distorted)
            else:
                value = parts[name]
            scores[name] = np.asarray(value, np.float64)
        return scores

    def heatmap(self, reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
        """The spatial LPIPS maps of a batch, (N, H, W), the input's size."""
        if self._heatmap is None:
            raise ValueError("this Scorer was built without heatmaps=True")
        return np.asarray(self._heatmap(reference, distorted, spatial=True, normalize=True))


def heatmap_image(values: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """An (H, W) map as an (H, W, 3) uint8 picture: matplotlib's "inferno", `scale` at the top."""
    from matplotlib import colormaps

    colours = colormaps["inferno"](np.clip(values / scale, 0, 1))[..., :3]
    return (colours * 255).round().astype(np.uint8)
