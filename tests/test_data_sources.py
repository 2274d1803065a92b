"""Sources read through TFDS: a tiny ILSVRC-2012 in the real archive layout, an image folder, and
undecodable files (named in the error, or skipped and counted)."""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vgg_flax import cli, data, parallel
from vgg_flax.data import sources
from vgg_flax.data.config import resolve
from vgg_flax.train import base_config

# The first three validation images' classes in the list TFDS ships (validation_labels.txt):
# labels are matched to ILSVRC2012_val_00000001.JPEG ... by sorted file name.
VAL_CLASSES = ("n01751748", "n09193705", "n02105855")
SIZES = ((30, 40), (44, 36), (36, 36))  # (height, width): landscape, portrait, square


def jpeg_bytes(seed: int, height: int, width: int) -> bytes:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(smooth).resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def add_file(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_ilsvrc(manual_dir, per_class: int = 2) -> None:
    """ILSVRC2012_img_train.tar (a tar of per-class tars) and ILSVRC2012_img_val.tar."""
    manual_dir.mkdir()
    with tarfile.open(manual_dir / "ILSVRC2012_img_train.tar", "w") as train:
        for c, wnid in enumerate(VAL_CLASSES):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(per_class):
                    h, w = SIZES[(c + i) % len(SIZES)]
                    add_file(class_tar, f"{wnid}_{i + 1}.JPEG", jpeg_bytes(10 * c + i, h, w))
            add_file(train, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(manual_dir / "ILSVRC2012_img_val.tar", "w") as val:
        for i in range(len(VAL_CLASSES)):
            h, w = SIZES[i]
            add_file(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg_bytes(100 + i, h, w))


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """Prepared with README.md's command: vgg-flax prepare-data --manual-dir ... --data-dir ..."""
    root = tmp_path_factory.mktemp("ilsvrc")
    write_ilsvrc(root / "manual")
    argv = ["prepare-data", "--manual-dir", str(root / "manual"), "--data-dir", str(root / "tfds")]
    assert cli.main(argv) == 0
    return data.default_config(
        source="imagenet2012",
        data_dir=str(root / "tfds"),
        manual_dir=str(root / "manual"),
        scale=32,
        crop_size=24,
        eval_scale=32,
    )


def test_imagenet2012_from_the_ilsvrc_tars(imagenet):
    names = tfds.builder("imagenet2012", data_dir=imagenet.data_dir).info.features["label"].names
    wanted = {names.index(w) for w in VAL_CLASSES}

    it = data.train_iterator(imagenet, global_batch_size=4, seed=0, mesh=parallel.make_mesh())
    assert it.num_examples == 6 and it.num_classes == 1000
    labels = []
    for _ in range(3):  # two epochs
        batch = next(it)
        assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.float32
        labels.extend(np.asarray(batch["label"]).tolist())
    assert set(labels) == wanted

    train = list(data.eval_images(imagenet, scale_q=32, split="train"))
    assert len(train) == 6
    for ex in train:  # the label is the class of the per-class tar the file came from
        assert names[ex["label"]] == ex["key"].split("_")[0]
        assert min(ex["image"].shape[:2]) == 32

    val = sorted(data.eval_images(imagenet, scale_q=32), key=lambda ex: ex["key"])
    assert [ex["key"] for ex in val] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    assert [names[ex["label"]] for ex in val] == list(VAL_CLASSES)
    # Shapes keep the aspect ratio: 30x40 -> 32x42 (floor), 44x36 -> 39x32, 36x36 -> 32x32.
    assert [ex["image"].shape[:2] for ex in val] == [(32, 42), (39, 32), (32, 32)]

    batches = list(data.local_eval_batches(imagenet, local_batch_size=2))
    assert [b["mask"].tolist() for b in batches] == [[True, True], [True, False]]


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(ValueError, match="not prepared"):
        data.make_source("imagenet2012", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="ILSVRC2012_img_train.tar"):
        data.prepare("imagenet2012", data_dir=str(tmp_path), manual_dir=str(tmp_path))


@pytest.fixture()
def folder(tmp_path):
    """folder/train/<class>/: four good JPEGs per class, a truncated JPEG and a non-image."""
    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(4):
            payload = jpeg_bytes(c * 10 + i, 40 + 4 * i, 48)
            (tmp_path / "train" / name / f"{name}{i}.jpg").write_bytes(payload)
    truncated = jpeg_bytes(99, 40, 40)
    (tmp_path / "train" / "cat" / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (tmp_path / "train" / "dog" / "notanimage.png").write_bytes(b"this is not a PNG file")
    return {"source": "folder", "folder": str(tmp_path), "eval_split": "train", "scale": 32,
            "crop_size": 24, "eval_scale": 32}  # fmt: skip


def test_corrupt_images_raise_an_error_naming_the_file(folder):
    with pytest.raises(data.CorruptImageError, match=r"(truncated\.jpg|notanimage\.png).*skip"):
        list(data.eval_images(folder, scale_q=32))
    with pytest.raises(data.CorruptImageError, match=r"truncated\.jpg|notanimage\.png"):
        list(data.local_eval_batches(folder, local_batch_size=4))
    it = data.train_iterator(folder, global_batch_size=2, seed=0, mesh=parallel.make_mesh())
    with pytest.raises(data.CorruptImageError, match=r"truncated\.jpg|notanimage\.png"):
        for _ in range(5):  # one epoch: 10 files
            next(it)


def test_corrupt_images_are_skipped_and_counted_on_request(folder):
    folder["on_corrupt"] = "skip"
    good = list(data.eval_images(folder, scale_q=32))
    assert len(good) == 8 and not any("truncated" in ex["key"] for ex in good)
    batches = list(data.local_eval_batches(folder, local_batch_size=4))
    assert len(batches) == 3  # ten files planned: ceil(10 / 4)
    assert [int(b["mask"].sum()) for b in batches] == [4, 4, 0]
    it = data.train_iterator(folder, global_batch_size=2, seed=0, mesh=parallel.make_mesh())
    for _ in range(8):  # two epochs of eight good images
        assert next(it)["image"].shape == (2, 24, 24, 3)
    assert it.skipped >= 2 and it.get_state()["skipped"] == [it.skipped]


class TinyColours(tfds.core.GeneratorBasedBuilder):
    """A registered TFDS dataset: PNG images, no file-name feature, label = the lit channel."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "picture": tfds.features.Image(),
                    "colour": tfds.features.ClassLabel(num_classes=3),
                }
            ),
            supervised_keys=("picture", "colour"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(9), "test": self._generate_examples(5)}

    def _generate_examples(self, n):
        for i in range(n):
            image = np.zeros((20 + i, 30, 3), np.uint8)
            image[..., i % 3] = 200  # the label is the lit channel
            yield i, {"picture": image, "colour": i % 3}


def test_any_tfds_dataset_by_name(tmp_path):
    """A TFDS builder registered by name (PNG images, no file-name feature) reads like any other."""
    tfds.builder("tiny_colours", data_dir=str(tmp_path)).download_and_prepare()
    cfg = {"source": "tiny_colours", "data_dir": str(tmp_path), "eval_split": "test",
           "scale": 16, "crop_size": 16, "eval_scale": 16, "normalize": "caffe",
           "flip": False, "pca_lighting": 0.0}  # fmt: skip
    it = data.train_iterator(cfg, global_batch_size=3, seed=0, mesh=parallel.make_mesh())
    assert it.num_classes == 3 and it.num_examples == 9
    for _ in range(3):
        batch = next(it)
        bgr = np.asarray(batch["image"]).mean(axis=(1, 2))  # caffe: BGR minus the mean pixel
        lit = 2 - np.argmax(bgr, axis=1)
        np.testing.assert_array_equal(lit, np.asarray(batch["label"]))
    examples = list(data.eval_images(cfg, scale_q=16))
    assert len(examples) == 5 and len({ex["key"] for ex in examples}) == 5


def write_class_folder(root, counts: dict[str, int]) -> set[str]:
    """root/<class>/<i>.png: tiny PNGs (and a stray text file); their 'class/name' names."""
    names = set()
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.full((8, 8, 3), 10 * c + i, np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
            names.add(f"{name}/{i:02d}.png")
        (root / name / "notes.txt").write_text("not an image: ignored, as ImageFolder does")
    return names


def _split_names(source, split):
    rows = list(source.read(split).as_numpy_iterator())
    names = ["/".join(r["key"].decode().split("/")[-2:]) for r in rows]
    assert [source.class_names[r["label"]] for r in rows] == [n.split("/")[0] for n in names]
    return names


def test_a_class_folder_splits_stratified_and_deterministic(tmp_path):
    counts = {"ant": 10, "bee": 5, "cow": 7}
    everything = write_class_folder(tmp_path / "one", counts)
    source = data.make_source("folder", folder=str(tmp_path / "one"))
    assert source.class_names == ("ant", "bee", "cow") and source.num_classes == 3
    train, val = _split_names(source, "train"), _split_names(source, "val")
    assert not set(train) & set(val) and set(train) | set(val) == everything
    assert len(train) + len(val) == len(everything)
    per_class = {c: sum(n.startswith(c + "/") for n in val) for c in counts}
    assert per_class == {"ant": 2, "bee": 1, "cow": 1}  # round(0.2 n) of each class
    assert len({n.split("/")[0] for n in train[:6]}) == 3  # classes interleaved, not in blocks
    # the same files in the same parts from another folder, files written in another order
    other = tmp_path / "elsewhere" / "two"
    for name in sorted(everything, reverse=True):
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_bytes((tmp_path / "one" / name).read_bytes())
    again = data.make_source("folder", folder=str(other))
    assert (_split_names(again, "train"), _split_names(again, "val")) == (train, val)
    # through the pipeline: val_fraction is a data option
    options = {"source": "folder", "folder": str(other), "eval_split": "val", "val_fraction": 0.5}
    keys = [ex["key"] for ex in data.eval_images(options, scale_q=8)]
    assert len(keys) == 5 + 3 + 4  # half of each class, rounded half up
    assert base_config.data_fields(source="folder").val_fraction is None  # a config field


def test_class_folder_errors(tmp_path):
    write_class_folder(tmp_path / "small", {"ant": 5, "bee": 2})
    with pytest.raises(ValueError, match=r"small/bee has 2 image\(s\): too few.*val_fraction=0.2"):
        data.make_source("folder", folder=str(tmp_path / "small"))
    assert data.make_source("folder", folder=str(tmp_path / "small"), val_fraction=0.5)
    write_class_folder(tmp_path / "split" / "train", {"ant": 2, "bee": 2})
    write_class_folder(tmp_path / "split" / "val", {"ant": 1, "bee": 1})
    with pytest.raises(ValueError, match=r"already split into train, val/.*drop val_fraction"):
        data.make_source("folder", folder=str(tmp_path / "split"), val_fraction=0.2)
    assert data.make_source("folder", folder=str(tmp_path / "split")).split_sizes["val"] == 2
    with pytest.raises(ValueError, match="val_fraction=1.5 must be between 0 and 1"):
        resolve({"source": "folder", "val_fraction": 1.5})


def test_the_digits_are_rendered_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VGG_FLAX_CACHE", str(tmp_path))
    path = sources.digits_cache_path(16)
    assert path.startswith(str(tmp_path / "digits"))
    made = sources._render_digits(16)
    sources.digits_arrays.cache_clear()
    try:
        first = sources.digits_arrays(16)  # made, and kept
        assert os.path.isfile(path)

        def not_again(image_size):
            raise AssertionError("rendered again although the cache holds them")

        monkeypatch.setattr(sources, "_render_digits", not_again)
        sources.digits_arrays.cache_clear()
        read = sources.digits_arrays(16)
        for split in sources.DIGITS_SPLITS:
            for ours, fresh in zip((*first[split], *read[split]), 2 * made[split], strict=True):
                np.testing.assert_array_equal(ours, fresh)
                assert ours.dtype == fresh.dtype
        # An unreadable or truncated file is made again (and replaced), never an error.
        monkeypatch.setattr(sources, "_render_digits", lambda image_size: made)
        for damaged in (b"not an npz", open(path, "rb").read()[:1000]):
            with open(path, "wb") as file:
                file.write(damaged)
            sources.digits_arrays.cache_clear()
            assert sources.digits_arrays(16)["test"][1].tolist() == made["test"][1].tolist()
            assert os.path.getsize(path) > 1000
    finally:
        sources.digits_arrays.cache_clear()
