"""A folder of class subfolders (folder/<class>/<images>) split into "train" and "val".

The split is stratified and deterministic: in each class the files are ordered by the SHA-256 of
their name (not of their path, so the folder may sit anywhere), and the first
round(n * val_fraction) are "val". The same file is in the same split on every run and host; a
split's files are ordered by the same hash, so the classes are interleaved and every host's
contiguous slice holds all of them. No TensorFlow: plain file listing.
"""

from __future__ import annotations

import hashlib
import math
import os

SUFFIXES = (".jpg", ".jpeg", ".png")  # those TFDS's ImageFolder reads (the train/val layout)
DEFAULT_VAL_FRACTION = 0.2
SPLITS = ("train", "val")


def _visible(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _subfolders(folder: str) -> list[str]:
    return [n for n in _visible(folder) if os.path.isdir(os.path.join(folder, n))]


def _images(folder: str) -> list[str]:
    return [n for n in _visible(folder) if n.lower().endswith(SUFFIXES)]


def is_class_folder(folder: str) -> bool:
    """True for folder/<class>/<images> (images in the subfolders, none nested deeper)."""
    subs = [os.path.join(folder, n) for n in _subfolders(folder)]
    return bool(subs) and not any(_subfolders(s) for s in subs) and any(_images(s) for s in subs)


def _order(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def split_class_folder(
    folder: str, val_fraction: float | None = None
) -> tuple[dict[str, list[tuple[str, int]]], tuple[str, ...]]:
    """{"train": [(path, label)], "val": [...]} of folder/<class>/<images>, and the class names.

    `val_fraction` (None: DEFAULT_VAL_FRACTION) of each class goes to "val"; a class too small to
    give both parts at least one image is a ValueError naming it.
    """
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must be between 0 and 1 (exclusive)")
    classes = tuple(_subfolders(folder))
    parts: dict[str, list[tuple[str, str, int]]] = {split: [] for split in SPLITS}
    for label, name in enumerate(classes):
        files = sorted(
            (_order(f"{name}/{f}"), os.path.join(folder, name, f), label)
            for f in _images(os.path.join(folder, name))
        )
        num_val = math.floor(len(files) * fraction + 0.5)
        if not 0 < num_val < len(files):
            raise ValueError(
                f"class folder {os.path.join(folder, name)} has {len(files)} image(s): too few "
                f"for val_fraction={fraction} (each split needs at least one). Add images, "
                f"change data.val_fraction, or split the folder into train/ and val/ yourself"
            )
        parts["val"] += files[:num_val]
        parts["train"] += files[num_val:]
    return {s: [(p, lb) for _, p, lb in sorted(rows)] for s, rows in parts.items()}, classes


def check_split_folder(folder: str, val_fraction: float | None) -> None:
    """A folder already split (folder/<split>/<class>/) takes no val_fraction: a clear error."""
    if val_fraction is not None:
        raise ValueError(
            f"val_fraction={val_fraction} is for a folder of class subfolders (folder/<class>/"
            f"<images>), but {folder} is already split into {', '.join(_subfolders(folder))}/: "
            "drop val_fraction and choose the parts with data.split and data.eval_split "
            "(e.g. train and val)"
        )
