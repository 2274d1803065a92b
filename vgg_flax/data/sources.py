"""Where examples come from: the embedded digits, any TFDS dataset (imagenet2012 from its tars),
or a folder of images in class subfolders. Every source reads a contiguous slice of a split as a
tf.data.Dataset of {"image": encoded bytes or uint8 HxWx3, "label": int32, "key": string}, in a
fixed order, images left undecoded so decoding can be fused with cropping.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zipfile
from typing import Any

import numpy as np

from vgg_flax.data import downloads, folder_split
from vgg_flax.data._tf import as_written, tf, tfds

DIGITS_SPLITS = {"train": 1437, "test": 360}  # scikit-learn's 1,797 digits, split 80/20
DIGITS_SPLIT_SEED = 0
_DIGITS_PARTS = ("images", "labels", "index")  # digits_arrays' tuples, as cached
_DIGITS_FORMAT = 1  # in the cached file's name: raise it when _render_digits changes
_KEY_FEATURES = ("file_name", "image/filename", "filename", "id")


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset: its name, classes, split sizes and a reader of split slices."""

    name: str
    num_classes: int
    split_sizes: dict[str, int]
    reader: Any  # (split, start, stop) -> tf.data.Dataset
    class_names: tuple[str, ...] | None = None  # label index -> name, where the source has them

    def num_examples(self, split: str) -> int:
        """Number of examples in `split`; a ValueError names the splits that exist."""
        if split not in self.split_sizes:
            raise ValueError(
                f"{self.name} has no split {split!r}; available: {sorted(self.split_sizes)}"
            )
        return self.split_sizes[split]

    def read(self, split: str, start: int = 0, stop: int | None = None) -> tf.data.Dataset:
        """Examples start..stop-1 of `split`, in a fixed order; an empty split is an error."""
        size = self.num_examples(split)
        if size == 0:
            raise ValueError(
                f"{self.name}: split {split!r} has no examples (for a folder source: no "
                f".jpg/.jpeg/.png files in {os.path.join(self.name, split, '<class>')}/); "
                "add images or choose another split"
            )
        stop = size if stop is None else stop
        return self.reader(split, start, stop)


@functools.lru_cache(maxsize=4)
def digits_arrays(image_size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits rendered as RGB uint8 images of `image_size` (bilinear).

    Returns split -> (images N,S,S,3 uint8, labels N int32, original indices N). The split is fixed:
    stratified 80/20 with a constant seed. Kept in the vgg-flax cache folder
    (`digits_cache_path`) once made: importing scikit-learn, which makes them, takes about 3 s
    of every run's start otherwise.
    """
    path = digits_cache_path(image_size)
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {
                split: tuple(stored[f"{split}_{part}"] for part in _DIGITS_PARTS)
                for split in DIGITS_SPLITS
            }
        expected = {
            split: (size, image_size, image_size, 3) for split, size in DIGITS_SPLITS.items()
        }
        if {split: parts[0].shape for split, parts in arrays.items()} == expected:
            return arrays
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # none yet, or unreadable: made again below
    arrays = _render_digits(image_size)
    try:
        from vgg_flax.weights.atomic import atomic_write

        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path) as file:
            np.savez(
                file,
                **{
                    f"{split}_{part}": array
                    for split, parts in arrays.items()
                    for part, array in zip(_DIGITS_PARTS, parts, strict=True)
                },
            )
    except (OSError, ValueError):  # a read-only cache folder: made again next time
        pass
    return arrays


def digits_cache_path(image_size: int) -> str:
    """Where `digits_arrays(image_size)` is kept: $VGG_FLAX_CACHE (default ~/.cache/vgg_flax)
    /digits/, one file per image size, scikit-learn version (its split could change) and
    rendering (`_DIGITS_FORMAT`)."""
    import importlib.metadata

    from vgg_flax.cache_folder import cache_dir

    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:  # rendering names the missing extra
        version = "missing"
    name = f"digits-v{_DIGITS_FORMAT}-{image_size}-sklearn{version}.npz"
    return os.path.join(cache_dir(), "digits", name)


def _render_digits(image_size: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    resample = Image.Resampling.BILINEAR
    rendered = np.stack(
        [np.asarray(Image.fromarray(g).resize((image_size, image_size), resample)) for g in grey]
    )
    rgb = np.repeat(rendered[..., None], 3, axis=-1)
    index = np.arange(len(grey))
    train, test = train_test_split(
        index,
        test_size=DIGITS_SPLITS["test"],
        random_state=DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )
    return {
        name: (rgb[idx], digits.target[idx].astype(np.int32), idx)
        for name, idx in (("train", np.sort(train)), ("test", np.sort(test)))
    }


def digits_source(image_size: int = 32) -> Source:
    """The embedded default: 10 classes, 1,437 train and 360 test images, no download."""
    arrays = digits_arrays(image_size)

    def reader(split, start, stop):
        images, labels, idx = (a[start:stop] for a in arrays[split])
        keys = np.array([f"digits/{split}/{i:04d}" for i in idx])
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "key": keys})

    sizes = {k: len(v[1]) for k, v in arrays.items()}
    return Source("digits", 10, sizes, reader, class_names=tuple(str(d) for d in range(10)))


def prepare(name: str, *, data_dir: str | None = None, manual_dir: str | None = None) -> None:
    """Build a TFDS dataset (for imagenet2012: from the ILSVRC tars in `manual_dir`)."""
    if manual_dir is not None and not os.path.isdir(manual_dir):
        raise ValueError(f"manual_dir={manual_dir!r} is not a directory")
    if name == "imagenet2012":
        tars = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
        found = [t for t in tars if manual_dir and os.path.isfile(os.path.join(manual_dir, t))]
        if not found:
            raise ValueError(
                f"imagenet2012 is prepared from the official tars: put {' and '.join(tars)} in "
                f"a folder and pass it as manual_dir (docs/data.md)"
            )
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():  # offline: one clear line now, not minutes of retries
        downloads.check_reachable(name, downloads.expected_downloads(builder), manual_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)


def tfds_source(name: str, *, data_dir: str | None = None, manual_dir: str | None = None) -> Source:
    """Any prepared TFDS image-classification dataset; prepared first when `manual_dir` is set."""
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if manual_dir is None:
            raise ValueError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}. Prepare it first "
                f"(docs/data.md), or set manual_dir to the folder holding its manual "
                f"files (for imagenet2012: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)."
            )
        prepare(name, data_dir=data_dir, manual_dir=manual_dir)
        builder = tfds.builder(name, data_dir=data_dir)
    return _builder_source(name, builder, slicing=True)


def folder_source(folder: str, val_fraction: float | None = None) -> Source:
    """Images in `folder/<split>/<class>/<file>` (.jpg/.jpeg/.png), via TFDS's ImageFolder; or in
    `folder/<class>/<file>`, split into "train" and "val" (also named "validation") by
    `val_fraction` (`folder_split`)."""
    if not folder or not os.path.isdir(folder):
        raise ValueError(
            f"folder={folder!r} is not a directory; expected folder/<split>/<class>/<image files> "
            "or folder/<class>/<image files>"
        )
    if folder_split.is_class_folder(folder):
        return _class_folder_source(folder, val_fraction)
    folder_split.check_split_folder(folder, val_fraction)
    return _builder_source(folder, tfds.folder_dataset.ImageFolder(folder), slicing=False)


def _class_folder_source(folder: str, val_fraction: float | None) -> Source:
    parts, classes = folder_split.split_class_folder(folder, val_fraction)
    # The held-out part answers to "validation" too: the name the trainer and evaluate default
    # to for a folder, so a folder split for you needs no split flag.
    parts = {**parts, "validation": parts["val"]} if "val" in parts else parts

    def reader(split, start, stop):
        paths, labels = zip(*parts[split][start:stop], strict=True) if stop > start else ((), ())
        ds = tf.data.Dataset.from_tensor_slices(
            {"key": tf.constant(paths, tf.string), "label": tf.constant(labels, tf.int32)}
        )
        return ds.map(as_written(lambda ex: {"image": tf.io.read_file(ex["key"]), **ex}))

    sizes = {split: len(rows) for split, rows in parts.items()}
    return Source(folder, len(classes), sizes, reader, class_names=classes)


def _builder_source(name: str, builder: Any, *, slicing: bool) -> Source:
    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    features = info.features
    if image_key not in features or label_key not in features:
        raise ValueError(
            f"{name!r} has no ({image_key!r}, {label_key!r}) features; an image classification "
            f"dataset is needed (features: {sorted(features.keys())})"
        )
    key_feature = next((k for k in _KEY_FEATURES if k in features), None)
    sizes = {split: info.splits[split].num_examples for split in info.splits}

    def reader(split, start, stop):
        read_config = tfds.ReadConfig(add_tfds_id=key_feature is None)
        ds = builder.as_dataset(
            split=f"{split}[{start}:{stop}]" if slicing else split,
            decoders={image_key: tfds.decode.SkipDecoding()},
            shuffle_files=False,
            read_config=read_config,
        )
        if not slicing:  # ImageFolder reads a split whole; it is a small list of files
            ds = ds.skip(start).take(stop - start)
        key = key_feature or "tfds_id"
        return ds.map(
            as_written(
                lambda ex: {
                    "image": ex[image_key],
                    "label": tf.cast(ex[label_key], tf.int32),
                    "key": ex[key] if ex[key].dtype == tf.string else tf.strings.as_string(ex[key]),
                }
            )
        )

    label = features[label_key]
    names = tuple(label.names) if getattr(label, "names", None) else None
    return Source(name, label.num_classes, sizes, reader, class_names=names)


def make_source(source: str, **options: Any) -> Source:
    """The source named `source`: "digits", "folder", or a TFDS name (e.g. "imagenet2012")."""
    options = {
        k: os.path.expanduser(v) if k in ("folder", "data_dir", "manual_dir") and v else v
        for k, v in options.items()
    }
    if source == "digits":
        return digits_source(options.get("image_size") or 32)
    if source == "folder":
        return folder_source(options.get("folder"), options.get("val_fraction"))
    return tfds_source(
        source, data_dir=options.get("data_dir"), manual_dir=options.get("manual_dir")
    )
