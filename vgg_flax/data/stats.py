"""Dataset statistics for normalisation and colour augmentation: mean RGB and PCA eigen-pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vgg_flax.data import config as config_lib
from vgg_flax.data import pipeline, preprocess
from vgg_flax.data._tf import as_written, tf


def _moments(image: tf.Tensor) -> dict[str, tf.Tensor]:
    pixels = tf.reshape(tf.cast(image, tf.float64) / 255.0, [-1, 3])
    return {
        "count": tf.cast(tf.shape(pixels)[0], tf.float64),
        "sum": tf.reduce_sum(pixels, axis=0),
        "outer": tf.matmul(pixels, pixels, transpose_a=True),
    }


def pixel_stats(
    data_config: Mapping[str, Any] | None,
    *,
    split: str | None = None,
    max_images: int | None = None,
    scale: int | None = None,
) -> dict[str, Any]:
    """Mean RGB (0-255) and the pixel colour PCA (pixels in [0, 1]) over a split.

    Every pixel of every image counts once (images rescaled to smaller side `scale` first when
    given, which is faster on large images). Returns {"mean_rgb", "pca_eigval" (descending),
    "pca_eigvec" (columns), "images"}; the names are data options.
    """
    cfg = config_lib.resolve(data_config)
    source = pipeline.source_for(cfg)
    split = split or cfg["split"]
    ds = source.read(split)
    if max_images:
        ds = ds.take(max_images)

    def moments(ex):
        if scale:
            image = preprocess.scaled_crop(ex["image"], preprocess.whole_plan(scale))
        else:
            image = tf.cast(preprocess.decode(ex["image"]), tf.float32)
        return _moments(image)

    totals = None
    images = 0
    for m in ds.map(as_written(moments), num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator():
        totals = m if totals is None else {k: totals[k] + m[k] for k in m}
        images += 1
    if totals is None:
        raise ValueError(f"split {split!r} of {source.name} has no images")
    mean = totals["sum"] / totals["count"]
    cov = totals["outer"] / totals["count"] - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
    return {
        "mean_rgb": (255.0 * mean).tolist(),
        "pca_eigval": eigval.tolist(),
        "pca_eigvec": eigvec.tolist(),
        "images": images,
    }
