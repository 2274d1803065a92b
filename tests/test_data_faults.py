"""Hostile and broken image folders: every fault is a clear, bounded error naming the file.

Each test makes its own tiny folder (folder/<split>/<class>/<files>): an all-undecodable
training split, a decompression bomb, an extreme aspect ratio for dense evaluation, unreadable
entries (a symlink loop, a directory named like an image) and an empty evaluation split.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vgg_flax import data, parallel
from vgg_flax.data import pipeline, preprocess


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def small(seed: int, height: int = 20, width: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_folder(root, files: dict[str, bytes | None], split: str = "train") -> dict:
    """folder/<split>/<class>/<name> for each "class/name" in `files` (None: no file)."""
    for name, payload in files.items():
        path = root / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if payload is not None:
            path.write_bytes(payload)
    return {"source": "folder", "folder": str(root), "eval_split": split, "scale": 32,
            "crop_size": 24, "eval_scale": 32}  # fmt: skip


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_an_undecodable_training_split_stops_with_an_error(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_FAILURES", 20)
    files = {f"{c}/{c}{i}.jpg": b"not an image" for c in ("cat", "dog") for i in range(3)}
    cfg = {**make_folder(tmp_path, files), "on_corrupt": mode}
    it = data.train_iterator(cfg, global_batch_size=2, seed=0, mesh=parallel.make_mesh())
    start = time.monotonic()
    named = rf"more than 20 images in a row.*{tmp_path}/train/(cat|dog)/\w+\.jpg: Unknown image"
    with pytest.raises(data.CorruptImageError, match=named):
        next(it)
    assert time.monotonic() - start < 60


def test_a_few_bad_images_are_still_skipped(tmp_path, monkeypatch):
    # The guard counts failures in a row only: one bad file among good ones is skipped.
    monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_FAILURES", 2)
    files = {f"cat/good{i}.png": encoded(small(i)) for i in range(3)}
    cfg = {**make_folder(tmp_path, {**files, "cat/bad.jpg": b"junk"}), "on_corrupt": "skip"}
    it = data.train_iterator(cfg, global_batch_size=1, seed=0, mesh=parallel.make_mesh())
    for _ in range(9):  # three epochs
        assert next(it)["image"].shape == (1, 24, 24, 3)
    assert it.skipped >= 2


def test_header_shape_matches_pil(tmp_path):
    image = small(0, 13, 21)
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        payload = encoded(image, fmt)
        width, height = Image.open(io.BytesIO(payload)).size
        got = [int(v) for v in preprocess.header_shape(tf.constant(payload))]
        assert got == [height, width], fmt
    assert [int(v) for v in preprocess.header_shape(tf.constant(b"?"))] == [0, 0]


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = io.BytesIO()
    Image.new("1", (16000, 16000)).save(bomb, "PNG")  # ~30 KB, 768 MB once decoded as RGB
    assert len(bomb.getvalue()) < 1_000_000
    cfg = make_folder(
        tmp_path, {"cat/good.png": encoded(small(0)), "cat/bomb.png": bomb.getvalue()}
    )
    with pytest.raises(data.CorruptImageError, match=r"bomb\.png.*16000x16000.*MAX_PIXELS"):
        list(data.eval_images(cfg, scale_q=32))
    kept = list(data.eval_images({**cfg, "on_corrupt": "skip"}, scale_q=32))
    assert [os.path.basename(ex["key"]) for ex in kept] == ["good.png"]


def test_an_extreme_aspect_ratio_is_refused_for_dense_evaluation(tmp_path):
    strip = encoded(np.zeros((10, 20000, 3), np.uint8))  # 512000x256 at Q=256
    cfg = make_folder(tmp_path, {"cat/strip.png": strip})
    with pytest.raises(data.CorruptImageError, match=r"strip\.png.*512000x256.*MAX_SCALED_PIXELS"):
        list(data.eval_images(cfg, scale_q=256))
    # The centre crop reads only the window it needs: the same image is fine there.
    [cropped] = data.eval_images(cfg, scale_q=256, center_crop=224)
    assert cropped["image"].shape == (224, 224, 3)


@pytest.mark.parametrize("kind", ["symlink-loop", "directory"])
def test_unreadable_entries_raise_corrupt_image_error_naming_the_file(tmp_path, kind):
    cfg = make_folder(tmp_path, {"cat/good.png": encoded(small(0)), "cat/x.jpg": None})
    bad = tmp_path / "train" / "cat" / "x.jpg"
    if kind == "directory":
        bad.mkdir()
    else:
        os.symlink(bad, bad)  # points at itself
    with pytest.raises(data.CorruptImageError, match=rf"{bad}.*(symbolic links|directory)"):
        list(data.eval_images(cfg, scale_q=32))
    kept = list(data.eval_images({**cfg, "on_corrupt": "skip"}, scale_q=32))
    assert [os.path.basename(ex["key"]) for ex in kept] == ["good.png"]


def test_an_empty_evaluation_folder_is_a_clear_error(tmp_path):
    cfg = make_folder(tmp_path, {"cat/good.png": encoded(small(0))})
    (tmp_path / "validation" / "cat").mkdir(parents=True)
    cfg["eval_split"] = "validation"
    with pytest.raises(ValueError, match=rf"{tmp_path}: split 'validation' has no examples"):
        list(data.eval_images(cfg, scale_q=32))
    with pytest.raises(ValueError, match="has no examples"):
        list(data.local_eval_batches(cfg, local_batch_size=2))
