"""Dataset statistics (mean RGB, colour PCA) against numpy on the same pixels."""

import numpy as np
from PIL import Image

from vgg_flax.data.sources import digits_arrays
from vgg_flax.data.stats import pixel_stats


def test_digits_stats_match_numpy():
    stats = pixel_stats(None)
    images = digits_arrays(32)["train"][0].astype(np.float64)
    np.testing.assert_allclose(stats["mean_rgb"], images.mean(axis=(0, 1, 2)), rtol=1e-9)
    # Grey images: one colour axis, (1, 1, 1)/sqrt(3), carrying all the variance.
    eigval, eigvec = np.asarray(stats["pca_eigval"]), np.asarray(stats["pca_eigvec"])
    np.testing.assert_allclose(abs(eigvec[:, 0]), np.full(3, 3**-0.5), rtol=1e-6)
    np.testing.assert_allclose(eigval[0], 3 * np.var(images[..., 0] / 255.0), rtol=1e-6)
    assert eigval[1] < 1e-9 and stats["images"] == 1437


def test_colour_stats_of_an_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = []
    (tmp_path / "train" / "x").mkdir(parents=True)
    for i in range(5):
        mix = rng.normal(size=(3, 3))  # correlated channels
        pixels = np.clip(128 + rng.normal(0, 30, (20 + i, 24, 3)) @ mix, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "train" / "x" / f"{i}.png")
        arrays.append(pixels.reshape(-1, 3) / 255.0)
    pixels = np.concatenate(arrays)
    stats = pixel_stats({"source": "folder", "folder": str(tmp_path)})
    np.testing.assert_allclose(stats["mean_rgb"], 255 * pixels.mean(axis=0), rtol=1e-9)
    eigval, eigvec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    np.testing.assert_allclose(stats["pca_eigval"], eigval[::-1], rtol=1e-6)
    cosines = np.abs(np.sum(np.asarray(stats["pca_eigvec"]) * eigvec[:, ::-1], axis=0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)
