"""The paper's image descriptors (Appendix B): VGG as a fixed feature extractor.

Each image is rescaled to smaller side Q for every test scale Q (default {256, 384, 512}) and the
net is applied densely over it (section 3.2: fc6 a 7x7 conv, fc7 a 1x1 conv); the penultimate
layer's map (relu7, 4096 channels) is averaged over space, and over the image and its horizontal
flip. The scales' descriptors are averaged (`aggregate="average"`) or stacked (`"stack"`, Q
times as long), and the result is L2-normalised. A net trained on crops under 224 (the 32x32
digits) is applied as its dense evaluation applies it (`evaluate.trained_size`), and its scales
default to the paper's in proportion to its input size.

The views are batched, padded and split over the device mesh exactly as dense evaluation does
(`evaluate.protocols.evaluate`): only the scorer differs, returning the layer's spatial mean
instead of the class posterior. Each finished file's per-scale descriptors go to a cache folder
(`cache_dir`), so an interrupted extraction rerun with the same folder skips finished files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vgg_flax.models import arch
from vgg_flax.transfer.images import ImageSet, image_set

PAPER_SCALES = (256, 384, 512)
AGGREGATES = ("average", "stack")
LAYERS = ("fc6", "relu6", "fc7", "relu7")  # head activations a descriptor can be taken from
CROP = arch.MIN_DENSE_SIZE


def default_scales(input_size: int) -> tuple[int, ...]:
    """The paper's Q = 256, 384, 512 for a 224 net; in proportion for nets trained smaller."""
    if input_size >= CROP:
        return PAPER_SCALES
    return tuple(round(q * input_size / CROP) for q in PAPER_SCALES)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How descriptors are made: scales Q, aggregation, flips, layer, preprocessing, input size."""

    scales: tuple[int, ...]
    aggregate: str = "average"
    flips: bool = True
    layer: str = "relu7"
    preprocessing: str = "torchvision"
    input_size: int = CROP

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(
                f"unknown aggregate {self.aggregate!r}; choose one of {', '.join(AGGREGATES)}"
            )
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer {self.layer!r}; choose one of {', '.join(LAYERS)}")
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"give one or more distinct scales Q, got {list(self.scales)}")
        least = min(self.input_size, CROP)
        if min(self.scales) < least:
            raise ValueError(
                f"scale {min(self.scales)} is below {least}: this net's dense evaluation needs "
                f"images of at least {least} pixels a side; use scales Q >= {least}"
            )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (scales as a list)."""
        return {**dataclasses.asdict(self), "scales": list(self.scales)}


@dataclasses.dataclass(frozen=True)
class Descriptors:
    """One L2-normalised descriptor per file (`features`, N x D float32), labels, the recipe."""

    features: np.ndarray
    files: tuple[str, ...]
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    recipe: Mapping[str, Any]
    computed: int = 0  # files computed by this call (the rest came from the cache)

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz (plain arrays only: it loads with allow_pickle=False), atomically."""
        from vgg_flax.weights.atomic import atomic_write

        arrays = {
            "features": self.features,
            "files": np.asarray(self.files, dtype=str),
            "recipe": np.asarray(json.dumps(dict(self.recipe))),
        }
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels)
        if self.class_names is not None:
            arrays["class_names"] = np.asarray(self.class_names, dtype=str)
        with atomic_write(path) as file:
            np.savez(file, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Descriptors:
        """Read what `save` wrote (never unpickles)."""
        try:
            with np.load(path, allow_pickle=False) as found:
                data = {key: found[key] for key in found.files}
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{path}: not a descriptor file written by vgg-flax features"
            ) from error
        if "features" not in data or data["features"].ndim != 2:
            raise ValueError(f"{path} holds no 2-D 'features' array: not a descriptor file")
        names = data.get("class_names")
        return cls(
            features=data["features"],
            files=tuple(str(f) for f in data.get("files", ())),
            labels=data.get("labels"),
            class_names=None if names is None else tuple(str(n) for n in names),
            recipe=json.loads(str(data["recipe"])) if "recipe" in data else {},
        )


def _masked_mean(maps: Any, valid_hw: Any) -> Any:
    """The mean over each map's valid (top-left valid_hw) positions: (N, h, w, C) -> (N, C)."""
    import jax.numpy as jnp

    rows = jnp.arange(maps.shape[1])[None, :] < valid_hw[:, :1]
    cols = jnp.arange(maps.shape[2])[None, :] < valid_hw[:, 1:]
    inside = (rows[:, :, None] & cols[:, None, :])[..., None]
    total = jnp.sum(jnp.where(inside, maps, 0.0), axis=(1, 2))
    return total / jnp.prod(valid_hw, axis=1, keepdims=True).astype(maps.dtype)


def extractor(
    model: Any,
    variables: Mapping[str, Any],
    input_size: int = CROP,
    *,
    layer: str = "relu7",
    mesh: Any = None,
) -> Any:
    """A scorer (as `evaluate.protocols` takes) whose "posterior" is `layer`'s spatial mean."""
    import jax
    import jax.numpy as jnp

    from vgg_flax.evaluate.batching import Scorer
    from vgg_flax.evaluate.trained_size import TrainedSizeScorer

    class DenseDescriptor(Scorer):
        def _forward(self, variables: Any, images: jax.Array, valid_hw: jax.Array) -> jax.Array:
            found = self.model.apply(
                variables, images, mode="dense", valid_hw=valid_hw, features=(layer,)
            )
            # The head's map is not masked by the model: fc6's 7x7 VALID window leaves
            # (valid side / 32 - 6) positions of each padded image.
            valid = valid_hw // arch.NETWORK_STRIDE - (arch.HEAD_INPUT_SIZE - 1)
            return _masked_mean(found[layer].astype(jnp.float32), valid)

    class TrainedSizeDescriptor(TrainedSizeScorer):
        def _forward(self, variables: Any, images: jax.Array, valid_hw: jax.Array) -> jax.Array:
            height, width = images.shape[1:3]
            sides = (height // arch.NETWORK_STRIDE, width // arch.NETWORK_STRIDE)
            if sides == (self.side,) * 2:  # the classifier's own head, as in training
                return self.model.apply(variables, images, features=(layer,))[layer]
            found = self.model.apply(
                variables, images, mode="dense", trained_pool5=self.side, features=(layer,)
            )
            return jnp.mean(found[layer].astype(jnp.float32), axis=(1, 2))

    if "fc7" not in variables.get("params", {}):
        raise ValueError("these weights have no fc6/fc7 (features only): no relu7 descriptors")
    if input_size >= CROP:
        return DenseDescriptor(model, variables, mesh)
    return TrainedSizeDescriptor(model, variables, input_size, mesh=mesh)


def aggregate(per_scale: np.ndarray, how: str = "average") -> np.ndarray:
    """One L2-normalised descriptor from a file's (scales, D) flip-averaged descriptors."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregate {how!r}; choose one of {', '.join(AGGREGATES)}")
    vector = per_scale.mean(axis=0) if how == "average" else per_scale.reshape(-1)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def fingerprint(variables: Mapping[str, Any]) -> str:
    """A short hash of the weights' first conv and fc7 (which weights a cache was made with)."""
    params = variables["params"]
    digest = hashlib.sha1()
    for name in (next(iter(params)), "fc7"):
        for leaf in sorted(params[name]):
            digest.update(np.ascontiguousarray(np.asarray(params[name][leaf])).tobytes())
    return digest.hexdigest()[:16]


class FileCache:
    """Per-file descriptors in a folder: `<hash of path, size, mtime>.npy`, plus `recipe.json`.

    A folder made with another recipe or other weights is refused (its files would not fit).
    """

    def __init__(self, folder: str | os.PathLike, identity: Mapping[str, Any]):
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, "recipe.json")
        identity = json.loads(json.dumps(dict(identity)))
        if os.path.exists(path):
            with open(path) as file:
                recorded = json.load(file)
            if recorded != identity:
                changed = sorted(
                    k for k in {**recorded, **identity} if recorded.get(k) != identity.get(k)
                )
                raise ValueError(
                    f"cache {self.folder} was made with another recipe or weights "
                    f"({', '.join(changed)} differ); delete it or give another cache folder"
                )
        else:
            from vgg_flax.weights.atomic import atomic_write

            with atomic_write(path, "w") as file:
                json.dump(identity, file, indent=1)

    def _path(self, file: str) -> str:
        stat = os.stat(file)
        key = f"{os.path.realpath(file)}\0{stat.st_size}\0{stat.st_mtime_ns}"
        return os.path.join(self.folder, hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def get(self, file: str) -> np.ndarray | None:
        """The file's cached (scales, D) descriptors, or None."""
        path = self._path(file)
        if not os.path.exists(path):
            return None
        return np.load(path, allow_pickle=False)

    def put(self, file: str, per_scale: np.ndarray) -> None:
        """Record a finished file's (scales, D) descriptors (atomically: a kill leaves none)."""
        from vgg_flax.weights.atomic import atomic_write

        with atomic_write(self._path(file)) as out:
            np.save(out, per_scale, allow_pickle=False)


def descriptors(
    source: Any,
    images: Sequence[str | os.PathLike] | ImageSet,
    *,
    scales: Sequence[int] | None = None,
    aggregate_scales: str = "average",
    flips: bool = True,
    layer: str = "relu7",
    preprocessing: Any = None,
    batch_size: int = 8,
    mesh: Any = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Descriptors:
    """Appendix B descriptors of image files (a folder with class subfolders gives labels).

    `source`: what `vgg_flax.load` reads, or its result (model, variables, usage); the usage
    record gives the preprocessing and the input size. `scales` default to `default_scales`;
    `aggregate_scales` is "average" or "stack". Views are batched `batch_size` at 224x224 (fewer
    pixels per row at larger scales) and split over `mesh` (default: this host's devices). With
    `cache_dir`, finished files are kept there and a rerun skips them.
    """
    from vgg_flax.evaluate import protocols
    from vgg_flax.inference.prediction import load_views
    from vgg_flax.weights.loading import Loaded, load

    found = images if isinstance(images, ImageSet) else image_set(images)
    loaded = source if isinstance(source, Loaded) else load(source, head="keep")
    model, variables, usage = loaded
    preset = preprocessing or usage.preprocessing
    preset_name = preset if isinstance(preset, str) else preset.name
    input_size = usage.input_size
    recipe = Recipe(
        tuple(int(q) for q in (scales or default_scales(input_size))),
        aggregate_scales,
        flips,
        layer,
        preset_name,
        input_size,
    )
    scorer = extractor(model, variables, input_size, layer=layer, mesh=mesh)
    crop = protocols.view_size([scorer])
    cache = None
    if cache_dir is not None:
        identity = {**recipe.to_json(), "weights": fingerprint(variables)}
        del identity["aggregate"]  # the cache holds every scale: any aggregation reads it
        cache = FileCache(cache_dir, identity)
    per_file: dict[int, np.ndarray] = {}
    for index, file in enumerate(found.files):
        cached = cache.get(file) if cache else None
        if cached is not None:
            per_file[index] = cached
    todo = [i for i in range(len(found.files)) if i not in per_file]

    def examples():
        for index in todo:
            views = load_views(found.files[index], "dense", recipe.scales, preset, crop)
            for scale, view in views.items():
                yield (index, scale), {scale: view}

    partial: dict[int, dict[int, np.ndarray]] = {}
    bar = _progress(len(found.files), len(per_file), progress)
    try:
        for (index, scale), vector in protocols.evaluate(
            [scorer], examples(), "dense", flips=flips, batch_size=batch_size
        ):
            scales_done = partial.setdefault(index, {})
            scales_done[scale] = vector
            if len(scales_done) == len(recipe.scales):
                per_scale = np.stack([scales_done[q] for q in recipe.scales])
                del partial[index]
                per_file[index] = per_scale
                if cache:
                    cache.put(found.files[index], per_scale)
                bar.update(1)
    finally:
        bar.close()
    features = np.stack(
        [aggregate(per_file[i], aggregate_scales) for i in range(len(found.files))]
    ).astype(np.float32)
    labels = None if found.labels is None else np.asarray(found.labels, np.int32)
    recipe_json = {**recipe.to_json(), "weights": fingerprint(variables)}
    return Descriptors(features, found.files, labels, found.class_names, recipe_json, len(todo))


def _progress(total: int, done: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="image", disable=not show)
