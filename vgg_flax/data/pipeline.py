"""Batches for training and evaluation: per-host slices, global arrays, determinism, resumption.

Each host reads its contiguous slice of a split. The training stream of a host is a deterministic
function of (seed, host, epoch): epoch e is the slice shuffled with a seed drawn from (seed, e),
and the augmentation of the element at stream position p uses a key folded from (seed, host, p).
The iterator state is the stream position, so resuming rebuilds the stream and skips records
before anything is decoded. Undecodable images are dropped by tf.data; the positions that go
missing are noticed here, and either raise an error naming the file or are counted. A training
stream that meets MAX_CONSECUTIVE_FAILURES undecodable images in a row stops with an error in
either mode, rather than searching its endless epochs for an image that decodes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from vgg_flax import parallel
from vgg_flax.data import config as config_lib
from vgg_flax.data import preprocess, sources
from vgg_flax.data._tf import as_written, tf

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
# Undecodable training images in a row after which the stream stops with CorruptImageError (in
# either on_corrupt mode): an unreadable split would otherwise be searched forever.
MAX_CONSECUTIVE_FAILURES = 1000


class CorruptImageError(ValueError):
    """An image could not be read or decoded, or is too large to process."""


def host_range(num_examples: int, index: int, count: int) -> tuple[int, int]:
    """The contiguous slice [start, stop) of host `index` out of `count` (sizes differ by <= 1)."""
    return num_examples * index // count, num_examples * (index + 1) // count


def source_for(cfg: Mapping[str, Any]) -> sources.Source:
    """The Source a resolved config names."""
    return sources.make_source(
        cfg["source"],
        image_size=cfg["image_size"],
        folder=cfg["folder"],
        val_fraction=cfg["val_fraction"],
        data_dir=cfg["data_dir"],
        manual_dir=cfg["manual_dir"],
    )


def _train_transform(cfg: Mapping[str, Any], seed: int, host: int):
    base_seed = tf.constant([seed, host], tf.int64)
    scale = config_lib.train_scale(cfg)
    preset = config_lib.preprocessing_for(cfg)

    def transform(ex):
        key = tf.random.experimental.stateless_fold_in(base_seed, ex["position"])
        crop_key, flip_key, light_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
        plan = preprocess.train_plan(crop_key, scale, cfg["crop_size"], cfg["random_crop"])
        image = preprocess.scaled_crop(ex["image"], plan)
        if cfg["flip"]:
            image = preprocess.random_flip(image, flip_key)
        if cfg["pca_lighting"] > 0:
            image = preprocess.pca_lighting(
                image, light_key, cfg["pca_lighting"], cfg["pca_eigval"], cfg["pca_eigvec"]
            )
        return _output(ex, preprocess.normalize(image, preset))

    return transform


def _eval_transform(cfg: Mapping[str, Any], plan: preprocess.Plan):
    preset = config_lib.preprocessing_for(cfg)

    def transform(ex):
        image = preprocess.scaled_crop(ex["image"], plan)
        return _output(ex, preprocess.normalize(image, preset))

    return transform


def _output(ex, image):
    return {"image": image, "label": ex["label"], "position": ex["position"]}


def _with_options(ds: tf.data.Dataset, cfg: Mapping[str, Any]) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    if cfg["threads"]:
        options.threading.private_threadpool_size = cfg["threads"]
    return ds.with_options(options)


def _with_positions(ds: tf.data.Dataset, offset: tf.Tensor | int = 0) -> tf.data.Dataset:
    return ds.enumerate().map(as_written(lambda i, ex: {**ex, "position": i + offset}))


def _shuffled_epoch(records, size, cfg, seed, epoch):
    """Epoch `epoch` of this host's records, shuffled by (seed, epoch), with stream positions."""
    shuffle_seed = tf.random.stateless_uniform(
        [], tf.stack([tf.constant(seed, tf.int64), epoch]), minval=None, maxval=None, dtype=tf.int64
    )
    ds = records.shuffle(cfg["shuffle_buffer"], seed=shuffle_seed, reshuffle_each_iteration=False)
    return _with_positions(ds, epoch * size)


class _PositionTracker:
    """Notices stream positions tf.data dropped (undecodable images) and acts on on_corrupt."""

    def __init__(self, on_corrupt: str, describe):
        self.on_corrupt = on_corrupt
        self.describe = describe  # position -> (key, error message)
        self.skipped = 0

    def check(self, positions: np.ndarray, expected: int) -> int:
        """Check `positions` continue from `expected`; returns the next expected position."""
        wanted = np.arange(expected, (positions[-1] + 1) if len(positions) else expected)
        self.missing(np.setdiff1d(wanted, positions))
        return int(positions[-1]) + 1 if len(positions) else expected

    def missing(self, positions: np.ndarray) -> None:
        """Raise naming the first missing image, or count them (on_corrupt="skip")."""
        if not len(positions):
            return
        if self.on_corrupt == "error":
            key, message = self.describe(int(positions[0]))
            raise CorruptImageError(
                f"cannot decode image {key}: {message}. Remove or replace the file, or set "
                f"on_corrupt='skip' to skip undecodable images (they are counted)."
            )
        self.skipped += len(positions)
        log.warning("skipped %d undecodable image(s); %d so far", len(positions), self.skipped)


def _describer(records: tf.data.Dataset, transform):
    """position -> (key, error) by replaying the record stream without decoding (error path)."""

    def describe(position: int) -> tuple[str, str]:
        try:
            ex = next(iter(records.skip(position).take(1)))
        except tf.errors.OpError as err:  # the file itself cannot be read (its path is named)
            return f"at position {position}", _short_message(err.message)
        key = ex["key"].numpy().decode()
        try:
            transform(ex)
        except tf.errors.OpError as err:
            return key, _short_message(err.message)
        return key, "the image failed in the input pipeline"

    return describe


def _short_message(message: str) -> str:
    """TensorFlow's error text without its graph-node prefix and op suffix."""
    message = re.sub(r"\[\[\{\{[^}]*\}\}\]\]|\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", message)
    message = re.sub(r"Error in user-defined function .*? with iterator: \S+: ", "", message)
    # A failed size check, as graphs ("assertion failed: [...]") and eager code word it.
    message = re.sub(r"assertion failed: \[(.*)\]", r"\1", message)
    message = re.sub(r"Expected .*? to be true\. Summarized data: b'(.*)'", r"\1", message)
    message = re.sub(r"\s*name:\s*$", "", message)
    return " ".join(message.split()).rstrip(".")


class TrainIterator:
    """Endless global training batches {"image", "label"}, resumable via get_state/set_state."""

    def __init__(self, cfg: Mapping[str, Any], *, global_batch_size: int, seed: int, mesh: Mesh):
        self.cfg = cfg
        self.mesh = mesh
        self.seed = int(seed)
        self.local_batch_size = parallel.local_batch_size(global_batch_size, mesh)
        self.host, self.hosts = jax.process_index(), jax.process_count()
        self.source = source_for(cfg)
        self.num_examples = self.source.num_examples(cfg["split"])
        self.num_classes = self.source.num_classes
        self.start, self.stop = host_range(self.num_examples, self.host, self.hosts)
        if self.stop - self.start < 1:
            raise ValueError(f"split {cfg['split']!r} has no examples for host {self.host}")
        self.batches = 0
        self.position = 0
        self._tracker = _PositionTracker(cfg["on_corrupt"], self._describe)
        self._iterator = None
        self._warming: tuple[int, threading.Thread, dict[str, Any]] | None = None

    @property
    def skipped(self) -> int:
        """Undecodable images skipped so far (on_corrupt="skip")."""
        return self._tracker.skipped

    def _records(self, first_epoch: int) -> tf.data.Dataset:
        records = self.source.read(self.cfg["split"], self.start, self.stop)
        size = self.stop - self.start
        epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
        return epochs.flat_map(
            as_written(lambda e: _shuffled_epoch(records, size, self.cfg, self.seed, e))
        )

    def dataset(self, position: int | None = None) -> tf.data.Dataset:
        """The local batch stream from `position` (default: the current one), numpy-ready, with
        "position"."""
        position = self.position if position is None else position
        per_epoch = self.stop - self.start
        first_epoch, offset = divmod(position, per_epoch)
        ds = self._records(first_epoch).skip(offset)  # before decoding: cheap
        # The stream ends once a record lies too far past the last image that decoded (the
        # parallel map may run ahead of it by its buffer: allowed for in the margin).
        last_good = tf.Variable(tf.constant(position - 1, tf.int64), trainable=False)
        limit = MAX_CONSECUTIVE_FAILURES + 4 * (os.cpu_count() or 1) + self.local_batch_size
        ds = ds.take_while(as_written(lambda ex: ex["position"] - last_good.read_value() <= limit))
        ds = ds.map(
            as_written(_train_transform(self.cfg, self.seed, self.host)),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        ).ignore_errors()
        ds = ds.map(as_written(lambda ex: _noted(ex, last_good)))  # sequential: positions in order
        ds = ds.batch(self.local_batch_size, drop_remainder=True).prefetch(self.cfg["prefetch"])
        return _with_options(ds, self.cfg)

    def _describe(self, position: int) -> tuple[str, str]:
        """(key, error) of the record at stream `position` (an image that failed)."""
        per_epoch = self.stop - self.start
        epoch, offset = divmod(position, per_epoch)
        transform = _train_transform(self.cfg, self.seed, self.host)
        return _describer(self._records(epoch), transform)(offset)

    def warm_up(self) -> None:
        """Start building the stream from the current position in a thread (TensorFlow traces
        its functions and fills the prefetch buffer while JAX compiles); the next batch uses it
        unless `set_state` moved the position meanwhile."""
        result: dict[str, Any] = {}

        def build(position: int = self.position) -> None:
            try:
                result["iterator"] = self.dataset(position).as_numpy_iterator()
            except Exception:  # noqa: BLE001  # rebuilt in __next__, which raises it there
                pass

        thread = threading.Thread(target=build, name="vgg-flax-input-warm-up", daemon=True)
        thread.start()
        self._warming = (self.position, thread, result)

    def _take_warm_iterator(self) -> Any:
        """The stream `warm_up` built, if it starts at the current position; else None."""
        if self._warming is None:
            return None
        position, thread, result = self._warming
        self._warming = None
        thread.join()
        return result.get("iterator") if position == self.position else None

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._iterator is None:
            self._iterator = self._take_warm_iterator() or self.dataset().as_numpy_iterator()
        try:
            batch = next(self._iterator)
        except StopIteration:  # only the failure guard ends the endless stream
            self._iterator = None
            key, message = self._describe(self.position)
            raise CorruptImageError(
                f"more than {MAX_CONSECUTIVE_FAILURES} images in a row of split "
                f"{self.cfg['split']!r} ({self.source.name}) cannot be decoded, from stream "
                f"position {self.position}; the first, {key}: {message}. Check that the split "
                "holds readable images (on_corrupt='skip' skips only a few bad ones)"
            ) from None
        self.position = self._tracker.check(batch["position"], self.position)
        self.batches += 1
        local = {"image": batch["image"], "label": batch["label"]}
        return parallel.to_global(local, self.mesh)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: batches consumed and every host's stream position."""
        positions, skipped = [self.position], [self.skipped]
        if self.hosts > 1:
            from jax.experimental import multihost_utils

            gathered = multihost_utils.process_allgather(np.array([self.position, self.skipped]))
            positions, skipped = gathered[:, 0].tolist(), gathered[:, 1].tolist()
        return {
            "batches": self.batches,
            "positions": [int(p) for p in positions],
            "skipped": [int(s) for s in skipped],
            "seed": self.seed,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the run that produced `state` (from get_state) stopped."""
        positions = state.get("positions")
        if positions is None or len(positions) != self.hosts:
            raise ValueError(
                f"iterator state {dict(state)} is not from a {self.hosts}-host run of get_state()"
            )
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"iterator state was saved with seed {state['seed']}, this run uses {self.seed}"
            )
        self.batches = int(state["batches"])
        self.position = int(positions[self.host])
        self._tracker.skipped = int(state.get("skipped", [0] * self.hosts)[self.host])
        self._iterator = None


def _noted(ex: dict[str, tf.Tensor], last_good: tf.Variable) -> dict[str, tf.Tensor]:
    """`ex`, after recording its position as the last one that decoded."""
    with tf.control_dependencies([last_good.assign(ex["position"])]):
        return {k: tf.identity(v) for k, v in ex.items()}


def train_iterator(
    data_config: Mapping[str, Any] | None, *, global_batch_size: int, seed: int, mesh: Mesh
) -> TrainIterator:
    """Endless training batches as global arrays sharded over the mesh's "data" axis."""
    cfg = config_lib.resolve(data_config)
    return TrainIterator(cfg, global_batch_size=global_batch_size, seed=seed, mesh=mesh)


def _eval_records(source, cfg, split, host, hosts):
    start, stop = host_range(source.num_examples(split), host, hosts)
    return _with_positions(source.read(split, start, stop)), stop - start


def _checked(ds, records, transform, on_corrupt, count, tracker=None):
    """Yield dataset elements, noticing dropped positions (also at the end of the slice)."""
    tracker = tracker or _PositionTracker(on_corrupt, _describer(records, transform))
    expected = 0
    for element in ds.as_numpy_iterator():
        positions = np.atleast_1d(element["position"])
        expected = tracker.check(positions, expected)
        yield element
    tracker.missing(np.arange(expected, count))


def local_eval_batches(
    data_config: Mapping[str, Any] | None,
    *,
    local_batch_size: int,
    host: int = 0,
    hosts: int = 1,
    split: str | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's evaluation batches as numpy: {"image", "label", "mask", "position"}.

    Every host yields the same number of batches (the largest host slice, rounded up); rows past
    the end of the slice, or left by skipped images, are zeros with mask False.
    """
    cfg = config_lib.resolve(data_config)
    source = source_for(cfg)
    split = split or cfg["eval_split"]
    total = source.num_examples(split)
    largest = max(b - a for a, b in (host_range(total, i, hosts) for i in range(hosts)))
    num_batches = math.ceil(largest / local_batch_size)
    records, count = _eval_records(source, cfg, split, host, hosts)
    transform = _eval_transform(cfg, preprocess.center_plan(cfg["eval_scale"], cfg["crop_size"]))
    ds = records.map(as_written(transform), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    ds = _with_options(ds.batch(local_batch_size).prefetch(cfg["prefetch"]), cfg)
    crop = cfg["crop_size"]
    empty = {
        "image": np.zeros((0, crop, crop, 3), np.float32),
        "label": np.zeros((0,), np.int32),
        "position": np.zeros((0,), np.int64),
    }
    pending = empty
    for batch in _checked(ds, records, transform, cfg["on_corrupt"], count):
        pending = {k: np.concatenate([pending[k], batch[k]]) for k in empty}
        # Skipped images leave short batches: regroup so only the last batch is padded.
        while len(pending["label"]) >= local_batch_size:
            yield _pad({k: v[:local_batch_size] for k, v in pending.items()}, local_batch_size)
            pending = {k: v[local_batch_size:] for k, v in pending.items()}
            num_batches -= 1
    while num_batches > 0:
        yield _pad(pending, local_batch_size)
        pending = empty
        num_batches -= 1


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["label"])
    out = {
        k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
    }
    out["mask"] = np.arange(size) < n
    return out


def eval_iterator(
    data_config: Mapping[str, Any] | None, *, global_batch_size: int, mesh: Mesh
) -> Iterator[dict[str, jax.Array]]:
    """Evaluation batches {"image", "label", "mask"}: every example exactly once, padding masked.

    Images follow the centre protocol: smaller side to eval_scale (Q), centre crop crop_size
    (torchvision's weights: Q=256, crop 224).
    """
    local = local_eval_batches(
        data_config,
        local_batch_size=parallel.local_batch_size(global_batch_size, mesh),
        host=jax.process_index(),
        hosts=jax.process_count(),
    )
    for batch in local:
        yield parallel.to_global(
            {"image": batch["image"], "label": batch["label"], "mask": batch["mask"]}, mesh
        )


def eval_images(
    data_config: Mapping[str, Any] | None,
    *,
    scale_q: int,
    center_crop: int | None = None,
    split: str | None = None,
    host: int | None = None,
    hosts: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Single test images {"image": float32 HxWx3 normalised, "label": int, "key": str}.

    The whole image with its smaller side `scale_q` (dense and multi-crop evaluation), or with
    `center_crop` its centre crop (torchvision's protocol: scale_q=256, center_crop=224). Each
    host gets its own slice of the split (default: this process's).
    """
    cfg = config_lib.resolve(data_config)
    source = source_for(cfg)
    split = split or cfg["eval_split"]
    host = jax.process_index() if host is None else host
    hosts = jax.process_count() if hosts is None else hosts
    if center_crop is not None and center_crop > scale_q:
        raise ValueError(f"center_crop={center_crop} is larger than scale_q={scale_q}")
    plan = (
        preprocess.whole_plan(scale_q)
        if center_crop is None
        else preprocess.center_plan(scale_q, center_crop)
    )
    records, count = _eval_records(source, cfg, split, host, hosts)
    transform = _eval_transform(cfg, plan)
    ds = records.map(
        as_written(lambda ex: {**transform(ex), "key": ex["key"]}),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    ds = _with_options(ds.ignore_errors().prefetch(cfg["prefetch"]), cfg)
    for ex in _checked(ds, records, transform, cfg["on_corrupt"], count):
        yield {"image": ex["image"], "label": int(ex["label"]), "key": ex["key"].decode()}
