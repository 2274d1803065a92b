"""What is in these photos: top-k ImageNet classes of image files, under any test protocol.

Images are read and resized with PIL exactly as torchvision's `Resize` + `CenterCrop` do it
(bilinear, antialiased, the longer side truncated; the crop offset rounded), so that the
"center" protocol reproduces `weights.transforms()`; the other protocols of
`vgg_flax.evaluate.protocols` (dense, multicrop) take the whole image with its smaller side
rescaled to each test scale Q. JAX is imported only when a network runs.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vgg_flax.preprocessing import CROP_SIZE, TORCHVISION_RESIZE, Preset, get_preset, preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's top classes: (class index, name, probability), most probable first."""

    image: str
    top: tuple[tuple[int, str, float], ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form: {"image", "top": [{"rank", "index", "name", "probability"}]}."""
        top = [
            {"rank": rank, "index": index, "name": name, "probability": probability}
            for rank, (index, name, probability) in enumerate(self.top, 1)
        ]
        return {"image": self.image, "top": top}


def image_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The image files among `paths`, each folder replaced by its images (sorted, not recursive)."""
    found = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
            if not names:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            found += [os.path.join(path, name) for name in names]
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    return found


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def resize_smaller_side(image: Any, size: int, interpolation: str = "bilinear") -> Any:
    """A PIL image with its smaller side `size`, as torchvision's `Resize(size)` (bilinear)."""
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}"
        )
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)  # torchvision truncates the longer side
    new = (size, new_long) if width <= height else (new_long, size)
    method = getattr(Image.Resampling, interpolation.upper())
    return image if new == (width, height) else image.resize(new, method)


def center_crop(image: Any, size: int = CROP_SIZE) -> Any:
    """The central size x size crop of a PIL image, offsets rounded as torchvision's CenterCrop."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"a {width}x{height} image is smaller than the {size}x{size} crop")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def load_views(
    path: str,
    protocol: str,
    scales: Sequence[int],
    preset: str | Preset,
    crop: int = CROP_SIZE,
) -> dict[int, np.ndarray]:
    """{Q: preprocessed HxWx3 float32 image} of one file, as `protocols.evaluate` takes them.

    "center": the crop x crop center of the image resized to Q (one scale); other protocols:
    the whole image with its smaller side Q, for every Q in `scales`.
    """
    from PIL import Image

    try:
        with Image.open(path) as file:
            image = file.convert("RGB")
    except OSError as error:
        raise ValueError(f"{path}: not an image PIL can read ({error})") from error
    if protocol == "center" and len(scales) != 1:
        raise ValueError(f"protocol 'center' takes one scale (the resize), got {list(scales)}")
    views = {}
    preset = get_preset(preset)
    for scale in scales:
        resized = resize_smaller_side(image, int(scale), preset.interpolation)
        if protocol == "center":
            resized = center_crop(resized, crop)
        pixels = np.asarray(resized, np.float32) / np.float32(255.0)
        views[int(scale)] = np.asarray(preprocess(pixels, preset), np.float32)
    return views


def posteriors(
    model: Any,
    variables: Mapping[str, Any],
    files: Sequence[str],
    *,
    preprocessing: str | Preset = "torchvision",
    protocol: str = "center",
    scales: Sequence[int] = (TORCHVISION_RESIZE,),
    flips: bool = True,
    batch_size: int = 8,
    input_size: int = CROP_SIZE,
) -> np.ndarray:
    """Class posteriors (N, classes) of image files under `protocol` at test scales `scales`.

    `input_size` is the crop size the network was trained at: under 224 (e.g. 32 for the
    digits) its crops and dense windows take that size (`protocols.scorer`).
    """
    from vgg_flax.evaluate import protocols

    scorer = protocols.scorer(model, variables, input_size)
    crop = protocols.view_size([scorer])
    examples = [load_views(path, protocol, scales, preprocessing, crop) for path in files]
    return protocols.evaluate_arrays(
        [scorer], examples, protocol, flips=flips, batch_size=batch_size
    )


def top_k(
    posterior: np.ndarray, k: int, class_names: Sequence[str] | None = None
) -> tuple[tuple[int, str, float], ...]:
    """The `k` most probable classes of one posterior as (index, name, probability)."""
    order = np.argsort(-posterior, kind="stable")[:k]
    names = class_names or [f"class {i}" for i in range(len(posterior))]
    return tuple((int(i), names[i], float(posterior[i])) for i in order)


def class_names_for(
    num_classes: int, recorded: Sequence[str] | None = None, *, imagenet: bool = True
) -> list[str] | None:
    """`recorded` names when given, else ImageNet's for 1000 classes (with `imagenet`), else None.

    None: the classes are numbered. A usage record names its classes itself, so predictions
    from one pass `imagenet=False`.
    """
    if recorded:
        if len(recorded) != num_classes:
            raise ValueError(f"{len(recorded)} class names recorded for {num_classes} classes")
        return list(recorded)
    if num_classes == 1000 and imagenet:
        from vgg_flax.classes import imagenet_classes

        return imagenet_classes()
    return None


def predict(
    images: Sequence[str | os.PathLike],
    model: Any,
    variables: Mapping[str, Any],
    usage: Any = None,
    *,
    top: int = 5,
    class_names: Sequence[str] | None = None,
    preprocessing: str | Preset | None = None,
    scales: Sequence[int] | None = None,
    input_size: int | None = None,
    **options: Any,
) -> list[Prediction]:
    """Top-`top` classes of each image file (folders: their images) with names and probabilities.

    `usage` (a `vgg_flax.weights.usage.Usage`, as `vgg_flax.load` and `vgg_flax.pretrained`
    return it: `predict(files, *vgg_flax.load(path))`) sets the defaults: its preprocessing, its
    resize as the test scale, its crop as the input size and its class names. Given, the keywords
    override it: `preprocessing` (a `Preset` or a name of `vgg_flax.preprocessing.PRESETS`),
    `scales`, `input_size`, `class_names`. Without a record: torchvision's preprocessing at 256
    and 224, ImageNet's names for 1000-class models. `options` are `posteriors`'s: protocol
    ("center", "dense", "multicrop", "dense+multicrop"), flips, batch_size.
    """
    files = image_files(images)
    if usage is None and preprocessing is None and model.num_classes != 1000:
        # Not an ImageNet classifier: the defaults below (a 224 crop, numbered classes) are
        # unlikely to be how it was trained (the demo's 32x32 digits net answered wrongly).
        warnings.warn(
            f"predict without a usage record on a {model.num_classes}-class model: using "
            "torchvision's preprocessing, a 224 crop and numbered classes; pass the usage "
            "vgg_flax.load returns, predict(files, *vgg_flax.load(path))",
            stacklevel=2,
        )
    if usage is not None:
        preprocessing = preprocessing or usage.preprocessing
        scales = scales or [usage.eval_scale]
        input_size = input_size or usage.input_size
        class_names = class_names or usage.class_names
    names = class_names_for(model.num_classes, class_names, imagenet=usage is None)
    probabilities = posteriors(
        model,
        variables,
        files,
        preprocessing=preprocessing or "torchvision",
        scales=scales or (TORCHVISION_RESIZE,),
        input_size=input_size or CROP_SIZE,
        **options,
    )
    return [Prediction(f, top_k(p, top, names)) for f, p in zip(files, probabilities, strict=True)]


def format_table(predictions: Sequence[Prediction]) -> str:
    """The predictions as a plain-text table, one block per image."""
    lines = []
    for prediction in predictions:
        lines.append(prediction.image)
        lines += [
            f"  {rank:>2}  {probability:8.4%}  {name} ({index})"
            for rank, (index, name, probability) in enumerate(prediction.top, 1)
        ]
    return "\n".join(lines)
