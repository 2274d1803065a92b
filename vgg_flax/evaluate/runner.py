"""Evaluate networks on a dataset split: load checkpoints, stream test images, count errors.

The images come from `vgg_flax.data.eval_images` (TensorFlow), imported only when a dataset is
read, so the protocols stay usable on arrays without TensorFlow.

On several hosts (`jax.process_count()`), each host reads its own contiguous slice of the split
and scores it on its own devices (a `Scorer` splits each batch over them); nothing is exchanged
while scoring, since hosts meet different image sizes. At the end the top-k counts are summed
over hosts and, when asked, the per-image posteriors gathered, so every host reports the errors
of the whole split with each image counted once.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vgg_flax import parallel, preprocessing
from vgg_flax.evaluate.batching import Scorer
from vgg_flax.evaluate.metrics import TopKCounts
from vgg_flax.evaluate.protocols import PROTOCOLS, evaluate, scorer, view_size
from vgg_flax.models.arch import NETWORK_STRIDE


def load_network(source: Any, arch: str | None = None, input_size: int | None = None) -> Scorer:
    """A scorer for weights: a `vgg_flax.load` source, or what it returned (model, variables,
    usage).

    `arch` names a `.pth` file's architecture (default: inferred from its tensors' shapes).
    `input_size` is the crop size the network was trained at (default: its usage record's);
    networks trained below 224 are scored at their size (`protocols.scorer`).
    """
    from vgg_flax.weights.loading import Loaded, load

    loaded = source if isinstance(source, Loaded) else load(source, arch, head="keep")
    return scorer(loaded.model, loaded.variables, input_size=input_size or loaded.usage.input_size)


def dataset_examples(
    data_config: Mapping[str, Any],
    protocol: str,
    scales: Sequence[int],
    split: str | None = None,
    *,
    host: int | None = None,
    hosts: int | None = None,
    crop: int = preprocessing.CROP_SIZE,
) -> Iterator[tuple[tuple[int, int, str], dict[int, np.ndarray]]]:
    """((index, label, source key), {Q: image}) per test image of this host's slice of the split.

    "center" reads torchvision's Resize(Q) + CenterCrop(crop) images (one scale); the other
    protocols read whole images with their smaller side Q. `host` of `hosts` (default: this
    process of all) reads the contiguous slice `vgg_flax.data.pipeline.host_range` gives it;
    `index` is the image's position in the whole split, so keys are unique across hosts.
    """
    from vgg_flax import data
    from vgg_flax.data.pipeline import host_range

    host = jax.process_index() if host is None else host
    hosts = jax.process_count() if hosts is None else hosts
    start, _ = host_range(split_size(data_config, split), host, hosts)
    if protocol == "center":
        if len(scales) != 1:
            raise ValueError(f"'center' takes one scale (the resize, 256), got {list(scales)}")
        streams = [
            data.eval_images(
                data_config,
                scale_q=scales[0],
                center_crop=crop,
                split=split,
                host=host,
                hosts=hosts,
            )
        ]
    else:
        streams = [
            data.eval_images(data_config, scale_q=q, split=split, host=host, hosts=hosts)
            for q in scales
        ]
    for index, per_scale in enumerate(zip(*streams, strict=True), start):
        if len({ex["key"] for ex in per_scale}) != 1:
            raise ValueError(f"the scales' image streams disagree at example {index}")
        key = (index, per_scale[0]["label"], per_scale[0]["key"])
        yield key, {q: ex["image"] for q, ex in zip(scales, per_scale, strict=True)}


def split_size(data_config: Mapping[str, Any], split: str | None = None) -> int:
    """Number of examples in the evaluation split."""
    from vgg_flax.data import config as data_config_lib
    from vgg_flax.data import pipeline

    cfg = data_config_lib.resolve(data_config)
    return pipeline.source_for(cfg).num_examples(split or cfg["eval_split"])


def evaluate_dataset(
    scorers: Sequence[Scorer],
    data_config: Mapping[str, Any],
    *,
    protocol: str,
    scales: Sequence[int],
    flips: bool = True,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    align: int = NETWORK_STRIDE,
    progress: Callable[[Iterator, int], Iterator] | None = None,
    posteriors: dict[int, tuple[int, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 error (%) of the ensemble `scorers` under `protocol` at test scales `scales`.

    `limit` evaluates only the first images of the split; `align` sets the padded shapes'
    granularity; `progress(iterator, total)` wraps this host's results (e.g. a tqdm bar);
    `posteriors`, when given, receives index -> (label, float32 posterior) of every image of the
    split (all hosts') for combining runs later. The result also reports the compiled shapes and
    the throughput. On several hosts every host must call it (the counts are summed over hosts).
    """
    from vgg_flax.data.pipeline import host_range

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    scales = [int(q) for q in scales]
    if not scales:
        raise ValueError("give at least one test scale Q")
    size = split_size(data_config, split)
    total = size if limit is None else min(limit, size)
    start, stop = host_range(size, jax.process_index(), jax.process_count())
    mine = max(0, min(stop, total) - start)  # this host's images among the first `total`
    examples = itertools.islice(
        dataset_examples(data_config, protocol, scales, split, crop=view_size(scorers)), mine
    )
    results = evaluate(scorers, examples, protocol, flips=flips, batch_size=batch_size, align=align)
    if progress is not None:
        results = progress(results, mine)
    started = time.perf_counter()
    counts, chunk, found = TopKCounts(), [], []

    def drain(counts: TopKCounts) -> TopKCounts:
        labels = np.array([key[1] for key, _ in chunk])
        return counts.add(np.stack([p for _, p in chunk]), labels) if chunk else counts

    for item in results:
        chunk.append(item)
        if posteriors is not None:
            found.append(item)
        if len(chunk) == 256:
            counts, chunk = drain(counts), []
    counts = drain(counts)
    seconds = time.perf_counter() - started
    counts = _sum_over_hosts(counts)
    if posteriors is not None:
        posteriors.update(_gather_posteriors(found))
    errors = counts.errors()
    return {
        "protocol": protocol,
        "scales": scales,
        "flips": flips,
        "examples": counts.total,
        "top1_error": errors["top1"],
        "top5_error": errors["top5"],
        "compiled_shapes": sum(len(s.shapes) for s in scorers),
        "seconds": seconds,
        "images_per_second": counts.total / seconds,
    }


def _sum_over_hosts(counts: TopKCounts) -> TopKCounts:
    correct = counts.correct or (0,) * len(counts.ks)
    summed = parallel.host_sum(np.array([counts.total, *correct], np.int32))
    return TopKCounts(counts.ks, int(summed[0]), tuple(int(c) for c in summed[1:]))


def _gather_posteriors(found: list) -> dict[int, tuple[int, np.ndarray]]:
    """index -> (label, float32 posterior) of every host's (key, posterior) results."""
    keys = parallel.host_concat(np.array([key[:2] for key, _ in found], np.int32).reshape(-1, 2))
    # Flat values: a host that scored no image cannot tell the number of classes.
    flat = [np.asarray(p, np.float32).ravel() for _, p in found]
    values = parallel.host_concat(np.concatenate(flat) if flat else np.zeros(0, np.float32))
    rows = values.reshape(len(keys), -1) if len(keys) else values.reshape(0, 0)
    return {int(i): (int(label), row) for (i, label), row in zip(keys, rows, strict=True)}
