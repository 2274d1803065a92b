"""Evaluate networks on a dataset split: load checkpoints, stream test images, count errors.

The images come from `vgg_flax.data.eval_images` (TensorFlow), imported only when a dataset is
read, so the protocols stay usable on arrays without TensorFlow.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from vgg_flax import preprocessing
from vgg_flax.arch import NETWORK_STRIDE
from vgg_flax.evaluate.batching import Scorer
from vgg_flax.evaluate.metrics import TopKCounts
from vgg_flax.evaluate.protocols import PROTOCOLS, evaluate


def load_network(path: str | os.PathLike, arch: str | None = None) -> Scorer:
    """A scorer for a vgg-flax checkpoint directory or a torchvision `.pth` file.

    `arch` names a `.pth` file's architecture (default: inferred from its tensors' shapes).
    """
    from vgg_flax.loader import load

    return Scorer(*load(path, arch, head="keep"))


def dataset_examples(
    data_config: Mapping[str, Any],
    protocol: str,
    scales: Sequence[int],
    split: str | None = None,
) -> Iterator[tuple[tuple[int, int, str], dict[int, np.ndarray]]]:
    """((index, label, source key), {Q: image}) per test image, one pass over the split per Q.

    "center" reads torchvision's Resize(Q) + CenterCrop(224) images (one scale); the other
    protocols read whole images with their smaller side Q. Every process reads the whole split
    (host 0 of 1), so the errors are never those of one host's slice.
    """
    from vgg_flax import data

    if protocol == "center":
        if len(scales) != 1:
            raise ValueError(f"'center' takes one scale (the resize, 256), got {list(scales)}")
        streams = [
            data.eval_images(
                data_config,
                scale_q=scales[0],
                center_crop=preprocessing.CROP_SIZE,
                split=split,
                host=0,
                hosts=1,
            )
        ]
    else:
        streams = [
            data.eval_images(data_config, scale_q=q, split=split, host=0, hosts=1) for q in scales
        ]
    for index, per_scale in enumerate(zip(*streams, strict=True)):
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

    `limit` evaluates only the first images; `align` sets the padded shapes' granularity;
    `progress(iterator, total)` wraps the results (e.g. a tqdm bar); `posteriors`, when given,
    receives index -> (label, float32 posterior) for combining runs later. The result also
    reports the compiled shapes and the throughput.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    scales = [int(q) for q in scales]
    if not scales:
        raise ValueError("give at least one test scale Q")
    total = split_size(data_config, split)
    total = total if limit is None else min(limit, total)
    examples = itertools.islice(dataset_examples(data_config, protocol, scales, split), total)
    results = evaluate(scorers, examples, protocol, flips=flips, batch_size=batch_size, align=align)
    if progress is not None:
        results = progress(results, total)
    started = time.perf_counter()
    counts, chunk = TopKCounts(), []

    def drain(counts: TopKCounts) -> TopKCounts:
        labels = np.array([key[1] for key, _ in chunk])
        return counts.add(np.stack([p for _, p in chunk]), labels) if chunk else counts

    for item in results:
        chunk.append(item)
        if posteriors is not None:
            (index, label, _), posterior = item
            posteriors[index] = (label, posterior.astype(np.float32))
        if len(chunk) == 256:
            counts, chunk = drain(counts), []
    counts = drain(counts)
    seconds = time.perf_counter() - started
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
