"""The image files of a folder and, when it has class subfolders, their labels.

`root/<class>/<image>` gives labels (class index in sorted class-name order); a folder of images
(or a list of files) gives none. Anything in a class folder that is not an image is an error
naming it, so a stray file is never silently skipped (nor read as an image).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from vgg_flax.inference.prediction import IMAGE_SUFFIXES, image_files


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Image files, their labels (None: unlabelled) and the class names the labels index."""

    files: tuple[str, ...]
    labels: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None


def _visible(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def class_folder(root: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> ImageSet:
    """The images of `root/<class>/<image>`, labelled by class (at least two classes).

    `suffixes`: the image files a class folder may hold (anything else is an error)."""
    root = os.fspath(root)
    suffixes = tuple(suffixes)
    classes = [n for n in _visible(root) if os.path.isdir(os.path.join(root, n))]
    if len(classes) < 2:
        found = f"one class ({classes[0]!r})" if classes else "no class subfolders"
        raise ValueError(
            f"{root}: an image folder for a classifier needs at least two class subfolders "
            f"(root/<class>/<image>), it has {found}"
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        entries = _visible(folder)
        for entry in entries:
            path = os.path.join(folder, entry)
            if os.path.isdir(path) or not entry.lower().endswith(suffixes):
                raise ValueError(
                    f"{path} is not an image file ({', '.join(suffixes)}); a class folder "
                    "holds only images: move it out"
                )
            files.append(path)
            labels.append(label)
        if not entries:
            raise ValueError(f"class folder {folder} holds no images")
    return ImageSet(tuple(files), tuple(labels), tuple(classes))


def check_training_folder(root: str | os.PathLike, splits: Sequence[str]) -> None:
    """Refuse a training folder with one class or a file the trainer would not read.

    `root/<class>/<image>` (split by the trainer), or `root/<split>/<class>/<image>` for each
    of `splits` that exists; the images the trainer's folder source reads (.jpg, .jpeg, .png).
    A missing folder is left to the data source, which names it.
    """
    from vgg_flax.data.folder_split import SUFFIXES, is_class_folder

    root = os.fspath(root)
    if not os.path.isdir(root):
        return
    if is_class_folder(root):
        class_folder(root, SUFFIXES)
        return
    for split in splits:
        if os.path.isdir(os.path.join(root, split)):
            class_folder(os.path.join(root, split), SUFFIXES)


def image_set(paths: Sequence[str | os.PathLike]) -> ImageSet:
    """One folder with class subfolders: labelled (`class_folder`); else files, unlabelled."""
    paths = [os.fspath(p) for p in paths]
    if len(paths) == 1 and os.path.isdir(paths[0]):
        entries = _visible(paths[0])
        if any(os.path.isdir(os.path.join(paths[0], n)) for n in entries):
            return class_folder(paths[0])
    return ImageSet(tuple(image_files(paths)))


def digits_folder(root: str | os.PathLike, relabel: Sequence[int] | None = None) -> dict[str, str]:
    """Write the demo's digits (32x32 renders) as PNGs in root/train|val/<class>/; the folders.

    `relabel[d]` is the class digit d is filed under (e.g. a permutation: a new 10-class task
    for fine-tuning). Class folders are named c0 .. c9. A folder of one's own images in the
    layout every transfer command reads, made from what installs with vgg-flax.
    """
    from PIL import Image

    from vgg_flax.data.sources import digits_arrays

    folders = {}
    for split, (images, labels, _) in digits_arrays(32).items():
        folder = os.path.join(os.fspath(root), "val" if split == "test" else split)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = f"c{label if relabel is None else relabel[label]}"
            os.makedirs(os.path.join(folder, name), exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, name, f"{index:04d}.png"))
        folders[split] = folder
    return folders
