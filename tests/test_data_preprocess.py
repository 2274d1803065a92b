"""The paper's augmentation and test protocols, against PIL, numpy and torchvision."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from torchvision.transforms._presets import ImageClassification

from vgg_flax import data, parallel, preprocessing
from vgg_flax.data import preprocess
from vgg_flax.data.sources import digits_arrays

SIZES = ((375, 500), (500, 375), (300, 300), (333, 500), (150, 200), (257, 256))
ONE_LEVEL = 1.0 + 1e-4  # one 8-bit level, in 0-255 units


def photo(seed: int, height: int, width: int) -> Image.Image:
    """A JPEG-friendly test image: smooth colour blobs plus noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder source with the JPEGs of SIZES (one class)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "val" / "a").mkdir(parents=True)
    for i, (h, w) in enumerate(SIZES):
        photo(i, h, w).save(root / "val" / "a" / f"{i}.jpg", quality=90)
    return {"source": "folder", "folder": str(root), "split": "val", "eval_split": "val"}


def seeds(n):
    return [tf.constant([7, i], tf.int64) for i in range(n)]


def test_crops_lie_inside_and_scales_stay_in_range():
    crop, smin, smax = 24, 30, 33
    drawn = []
    for seed in seeds(300):
        for height, width in ((40, 60), (70, 35)):
            plan = preprocess.train_plan(seed, (smin, smax), crop, random_crop=True)
            new_h, new_w, top, left, ch, cw = (int(v) for v in plan(height, width))
            assert min(new_h, new_w) in range(smin, smax + 1)
            assert 0 <= top <= new_h - crop and 0 <= left <= new_w - crop and ch == cw == crop
            drawn.append(min(new_h, new_w))
    counts = np.bincount(drawn)[smin:]
    assert len(counts) == 4 and counts.min() > 0.8 * len(drawn) / 4  # uniform over 30..33


def test_fused_jpeg_crop_equals_resize_then_crop():
    """decode_and_crop on the window a crop needs == decode all, resize all, crop."""
    image = np.asarray(photo(0, 150, 200))
    encoded = tf.io.encode_jpeg(image, quality=90)
    decoded = tf.io.decode_jpeg(encoded, dct_method=preprocess.JPEG_DCT)
    for seed in seeds(12):
        plan = preprocess.train_plan(seed, (64, 180), 56, random_crop=True)
        new_h, new_w, top, left, _, _ = (int(v) for v in plan(150, 200))
        full = tf.image.resize(decoded, [new_h, new_w], antialias=True)
        want = np.round(np.clip(full.numpy(), 0, 255))[top : top + 56, left : left + 56]
        got = preprocess.scaled_crop(encoded, plan).numpy()
        diff = np.abs(got - want)
        # Float rounding of the window offset can flip a value sitting at .5 by one level.
        assert diff.max() <= ONE_LEVEL and (diff > 0).mean() < 0.01


def test_flips_happen_about_half_the_time():
    cfg = data.default_config(flip=True)
    mesh = parallel.make_mesh()
    images = digits_arrays(32)["train"][0]
    mean = np.asarray(data.config.resolve(cfg)["mean_rgb"], np.float32)
    known = {im.tobytes(): "plain" for im in images}
    known.update({im[:, ::-1].tobytes(): "flipped" for im in images if (im != im[:, ::-1]).any()})
    it = data.train_iterator(cfg, global_batch_size=479, seed=0, mesh=mesh)
    seen = []
    for _ in range(6):  # two epochs
        batch = np.asarray(next(it)["image"]) + mean
        seen += [known.get(np.round(b).astype(np.uint8).tobytes(), "?") for b in batch]
    assert "?" not in seen
    assert 0.46 < seen.count("flipped") / len(seen) < 0.54  # binomial sd 0.009 over 2874


def test_colour_shift_has_the_configured_statistics():
    std, eigval = 0.1, np.asarray(preprocessing.IMAGENET_PCA_EIGVAL)
    eigvec = np.asarray(preprocessing.IMAGENET_PCA_EIGVEC)
    image = tf.zeros((2, 3, 3))
    alphas = []
    for seed in seeds(2000):
        shifted = preprocess.pca_lighting(image, seed, std).numpy()
        assert np.allclose(shifted, shifted[0, 0], atol=1e-4)  # one RGB shift per image
        # shift = 255 * V (alpha * lambda): solve for alpha.
        alphas.append(np.linalg.solve(eigvec, shifted[0, 0] / 255.0) / eigval)
    alphas = np.asarray(alphas)
    np.testing.assert_allclose(alphas.std(axis=0), std, rtol=0.08)
    np.testing.assert_allclose(alphas.mean(axis=0), 0.0, atol=3 * std / np.sqrt(2000))
    assert abs(np.corrcoef(alphas.T)[0, 1]) < 0.1


def test_augmentation_off_equals_pil_reference(photos):
    """Train pipeline with no randomness == PIL resize (bilinear) + centre crop - mean."""
    cfg = data.default_config(
        **photos, scale=96, crop_size=80, random_crop=False, flip=False, pca_lighting=0.0
    )
    mean = np.asarray(preprocessing.IMAGENET_MEAN_RGB)
    it = data.train_iterator(cfg, global_batch_size=1, seed=0, mesh=parallel.make_mesh())
    checked = 0
    for _ in range(len(SIZES)):
        got = np.asarray(next(it)["image"][0])
        for i, (h, w) in enumerate(SIZES):  # the order is shuffled: find the source image
            new_h, new_w = (96, w * 96 // h) if h <= w else (h * 96 // w, 96)
            with Image.open(f"{photos['folder']}/val/a/{i}.jpg") as im:
                resized = np.asarray(im.resize((new_w, new_h), Image.Resampling.BILINEAR))
            top, left = round((new_h - 80) / 2), round((new_w - 80) / 2)
            want = resized[top : top + 80, left : left + 80] - mean
            if np.abs(got - want).mean() < 0.5:
                assert np.abs(got - want).max() <= ONE_LEVEL
                checked += 1
    assert checked == len(SIZES)


def test_torchvision_eval_protocol_matches_torchvision(photos):
    """Resize 256 + centre crop 224 + mean/std == torchvision's ImageClassification(224).

    JPEG decoding is bit-exact with PIL's (accurate integer DCT); torchvision's antialiased
    bilinear resize rounds in fixed point, so pixels may differ by one 8-bit level: at most
    1/255/0.224 = 0.0175 after dividing by the smallest std, and rarely.
    """
    cfg = data.default_config(**photos, normalize="torchvision")
    reference = ImageClassification(crop_size=224)
    count = 0
    for ex in data.eval_images(cfg, scale_q=256, center_crop=224):
        with Image.open(ex["key"]) as im:
            want = reference(im.convert("RGB")).permute(1, 2, 0).numpy()
        diff = np.abs(ex["image"] - want)
        assert diff.max() <= 1 / 255 / min(preprocessing.TORCHVISION_STD) + 1e-5
        assert diff.mean() < 0.25 / 255 / min(preprocessing.TORCHVISION_STD)
        count += 1
    assert count == len(SIZES)


def test_normalisations():
    pixel = tf.constant([[[200.0, 100.0, 50.0]]])
    caffe = preprocess.normalize(pixel, preprocessing.PRESETS["caffe"]).numpy()[0, 0]
    np.testing.assert_allclose(caffe, [50 - 103.939, 100 - 116.779, 200 - 123.68], rtol=1e-6)
    torchvision = preprocess.normalize(pixel, preprocessing.PRESETS["torchvision"]).numpy()[0, 0]
    want = (
        np.array([200, 100, 50]) / 255 - preprocessing.TORCHVISION_MEAN
    ) / preprocessing.TORCHVISION_STD
    np.testing.assert_allclose(torchvision, want, rtol=1e-5)
    mean = preprocess.normalize(pixel, preprocessing.mean_rgb((1.0, 2.0, 3.0))).numpy()[0, 0]
    np.testing.assert_allclose(mean, [199, 98, 47])


@pytest.mark.parametrize("name", ["mean_rgb", *preprocessing.PRESETS])
def test_tf_and_numpy_sides_of_preprocess_are_equal(name):
    """One definition, two backends: the pipeline's tf normalisation is the numpy function's."""
    from vgg_flax.data.config import preprocessing_for

    normalize = "mean_rgb" if name == "mean_rgb" else name
    preset = preprocessing_for({"source": "folder", "normalize": normalize})
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    tf_side = preprocess.normalize(tf.constant(pixels), preset).numpy()
    numpy_side = preprocessing.preprocess(pixels / np.float32(255), preset)
    np.testing.assert_allclose(tf_side, numpy_side, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(
        tf_side, preprocessing.preprocess(pixels, preset, input_range=(0.0, 255.0))
    )
