"""One loader for every kind of weights: `load(source) -> (model, variables, usage)`, and `save`.

A source is a vgg-flax checkpoint directory (written by `save`, `vgg-flax convert` or a training
run's `model/`), a torchvision `.pth` file, a `.safetensors` file or weights folder
(`vgg_flax.weights.folder`: torchvision's, timm's or vgg-flax's layout), a hub repository
("hf-hub:timm/vgg16.tv_in1k", `vgg_flax.weights.hub`), a Keras `.h5`, a Caffe `.caffemodel` or a
state dict (name -> array). The architecture comes from the checkpoint's metadata, or from the
tensors' shapes. The usage record (`vgg_flax.weights.usage.Usage`) comes from `read_usage`, the
one place a checkpoint's metadata is read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vgg_flax.formats import foreign
from vgg_flax.formats.pth import load_pth
from vgg_flax.formats.torchvision import from_torchvision, infer_arch, model_fields
from vgg_flax.models import arch as arch_lib
from vgg_flax.models.vgg import VGG, architecture, create_model
from vgg_flax.preprocessing import get_preset
from vgg_flax.weights import checkpoint, folder, hub, registry
from vgg_flax.weights import usage as usage_lib
from vgg_flax.weights.usage import Usage

Variables = dict[str, Any]


class Loaded(NamedTuple):
    """What `load` and `pretrained` return: the module, its variables and their usage record."""

    model: VGG
    variables: Variables
    usage: Usage


def load(
    source: str | os.PathLike | Mapping[str, Any],
    arch: str | None = None,
    *,
    head: str = "auto",
    revision: str | None = None,
    cache: str | os.PathLike | None = None,
    **options: Any,
) -> Loaded:
    """`(model, variables, usage)` from a checkpoint directory, a weight file or a state dict.

    "hf-hub:OWNER/NAME" loads a hub repository's model.safetensors and config.json (timm's
    `timm/vgg16.tv_in1k` ...) through huggingface_hub's cache (`cache`: its folder), at
    `revision` (a branch, tag or commit; default "main"); `vgg_flax.weights.hub.fetch` says how
    files are checked and what offline mode does. A `.safetensors` file or a folder holding
    `model.safetensors` reads in torchvision's, timm's or vgg-flax's layout.

    Keras `.h5` files and Caffe `.caffemodel` files (the authors' VGG16/VGG19) load too; their
    architecture comes from the file (`arch`, if given, is checked against it).

    `arch` names a torchvision architecture (e.g. "vgg16_bn") for `.pth` files and state dicts;
    by default it is inferred from the tensors' shapes. `head` ("auto", "keep", "drop") is
    `from_torchvision`'s. `options` are further `VGG` fields (dropout_rate, dtype, kernels, ...);
    a `param_dtype` among them also casts the loaded arrays. `usage` says how to feed the
    network (see `read_usage`).
    """
    param_dtype = options.get("param_dtype")
    fetched = None
    if isinstance(source, str) and source.startswith(hub.PREFIX):
        fetched = hub.fetch(source, revision=revision, cache=cache)
        source = fetched.folder
    elif revision is not None or cache is not None:
        raise ValueError("revision= and cache= are for hub weights ('hf-hub:OWNER/NAME')")
    if folder.is_safetensors(source):  # before checkpoints: a weights folder is a folder too
        variables, usage = folder.read(source, arch, head=head, dtype=param_dtype)
        model = create_model(**usage.architecture, **options)
        if fetched is not None:
            usage = dataclasses.replace(usage, source=fetched.source, name=fetched.repo)
    elif isinstance(source, str | os.PathLike) and os.path.isdir(source):
        variables, metadata = checkpoint.read_model(source)  # hash and metadata checked
        usage = _usage_of_checkpoint(source, metadata)
        model = create_model(**usage.architecture, **options)
    elif foreign.is_foreign_file(source):  # Keras .h5 or Caffe .caffemodel
        variables, usage = foreign.read(source, head=head, dtype=param_dtype)
        model = model_for(variables, arch, **options)
        usage = registry.entry_for_file(os.path.basename(os.fspath(source))) or usage
    elif isinstance(source, Mapping) or _is_pth(source):
        arch = arch or _infer(source)
        variables = from_torchvision(source, arch, head=head, dtype=param_dtype)
        model = create_model(arch, **model_fields(arch, variables["params"]), **options)
        name = None if isinstance(source, Mapping) else os.path.basename(os.fspath(source))
        usage = (name and registry.entry_for_file(name)) or Usage(architecture(model))
    else:
        raise ValueError(
            f"{os.fspath(source)!r} is neither a vgg-flax checkpoint directory, a torchvision "
            ".pth file, a .safetensors file or folder, a Keras .h5 file nor a Caffe .caffemodel"
        )
    usage = _completed(usage, model, variables)
    cast = (lambda x: jnp.asarray(x, param_dtype)) if param_dtype else jnp.asarray
    return Loaded(model, jax.tree.map(cast, variables), usage)


def save(
    directory: str | os.PathLike,
    model: VGG,
    variables: Mapping[str, Any],
    usage: Usage | None = None,
    *,
    format: str = "orbax",
    layout: str | None = None,
    **metadata: Any,
) -> str:
    """Write `variables` with their usage record (and `metadata`) for `load`; atomic.

    `format`: "orbax" (a vgg-flax checkpoint) or "safetensors": a folder of model.safetensors
    and timm's config.json that timm and torchvision load too (`vgg_flax.weights.folder.write`;
    `layout` "torchvision", "timm" or "vgg-flax", by default torchvision's for its architectures).

    `usage` defaults to torchvision's preprocessing; its architecture is always `model`'s. The
    record's older keyword forms are still taken (preprocessing= a preset name or `Preset`,
    input_size=, eval_scale=, class_names=, train_scale=, train_flip=) when `usage` is not
    given. Returns the absolute path of the new checkpoint directory (which must not exist yet).
    """
    legacy = {k: metadata.pop(k) for k in (*usage_lib.LEGACY_KEYS, "class_names") if k in metadata}
    if usage is None:
        preset = legacy.get("preprocessing")
        if preset is not None and not isinstance(preset, str):  # a Preset (or its JSON form)
            del legacy["preprocessing"]
        usage = usage_lib.from_metadata({**architecture(model), **legacy})
        if preset is not None and not isinstance(preset, str):
            usage = dataclasses.replace(usage, preprocessing=get_preset(preset))
    elif legacy:
        raise ValueError(f"give {sorted(legacy)} in the usage record, not beside it")
    usage = dataclasses.replace(usage, architecture=architecture(model))
    if format == "safetensors":
        return folder.write(directory, model, variables, usage, layout=layout, **metadata)
    if format != "orbax" or layout is not None:
        raise ValueError(
            f"format={format!r}, layout={layout!r}: choose format 'orbax' (no layout) or "
            "'safetensors' (layout 'torchvision', 'timm' or 'vgg-flax')"
        )
    return checkpoint.save_model(directory, variables, usage_lib.to_metadata(usage, **metadata))


def read_usage(source: str | os.PathLike | Mapping[str, Any], arch: str | None = None) -> Usage:
    """The usage record of the weights at `source`: how to feed them, what their outputs mean.

    A vgg-flax checkpoint: its recorded one (`usage.from_metadata`, which also reads the records
    of older checkpoints; an old training run's "mean_rgb" takes the mean from the run's
    config.json). A weight file in the registry: the registry's; another `.pth` file or state
    dict: torchvision's preprocessing; a Keras or Caffe file: Caffe's (BGR, 0-255, minus the
    mean pixel). Reading a weight file's record reads its tensors (for the architecture).
    """
    if isinstance(source, str | os.PathLike) and os.path.isdir(source):
        return _usage_of_checkpoint(source, checkpoint.read_metadata(source))
    return load(source, arch, head="keep").usage


def model_for(variables: Mapping[str, Any], arch: str | None = None, **options: Any) -> VGG:
    """The `VGG` that `variables` fit (arch, head width, classes); `arch` checks it when given."""
    spec = foreign.architecture_of_params(variables["params"])
    found = spec["arch"]
    if arch is not None and arch_lib.layer_list(arch) != arch_lib.layer_list(found):
        raise ValueError(
            f"these weights are VGG {arch_lib.arch_label(found)} ({found}), not {arch}; leave "
            "the architecture out to use the file's"
        )
    if "fc8" in variables["params"]:
        options.setdefault("num_classes", spec["num_classes"])
        options.setdefault("head_width", spec["head_width"])
    return create_model(found, **options)


def _usage_of_checkpoint(directory: str | os.PathLike, metadata: Mapping[str, Any]) -> Usage:
    where = os.path.abspath(os.fspath(directory))
    mean = None
    if usage_lib.USAGE_KEY not in metadata:  # an older checkpoint: its run may know its mean
        mean = training_run_mean(directory)
    return usage_lib.from_metadata(metadata, data_mean=mean, where=where)


def training_run_mean(directory: str | os.PathLike) -> tuple[float, ...] | None:
    """The 0-255 RGB mean a training run normalised with, from the run's config.json.

    The run folder is the checkpoint's parent (RUN/model) or grandparent (RUN/checkpoints/N).
    Its data config's `mean_rgb`, else (None there) the default the input pipeline used: the
    digits' own mean for the digits, ImageNet's mean pixel otherwise. None without a config.
    """
    path = os.path.abspath(os.fspath(directory))
    for run in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        try:
            with open(os.path.join(run, "config.json")) as file:
                config = json.load(file)
        except (OSError, ValueError):
            continue
        data = config.get("data") if isinstance(config, dict) else None
        if not isinstance(data, dict):
            continue
        from vgg_flax.data.config import resolve, valid_fields

        return resolve(valid_fields(data))["mean_rgb"]
    return None


def _completed(usage: Usage, model: VGG, variables: Mapping[str, Any]) -> Usage:
    """`usage` with the loaded model's architecture, features_only and ImageNet's class names."""
    features_only = "fc8" not in variables["params"]
    names = usage.class_names
    imagenet = usage.preprocessing.name in ("torchvision", "caffe", "vgg16_features")
    if names is None and not features_only and model.num_classes == 1000 and imagenet:
        from vgg_flax.classes import imagenet_classes

        names = tuple(imagenet_classes())
    if names is not None and len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names recorded for {model.num_classes} classes")
    return dataclasses.replace(
        usage, architecture=architecture(model), features_only=features_only, class_names=names
    )


def _is_pth(source: Any) -> bool:
    return isinstance(source, str | os.PathLike) and os.path.isfile(source)


def _infer(source: Any) -> str:
    if isinstance(source, Mapping):
        return infer_arch(source)
    # A memory map reads only the file's index; the tensors are read once, by the conversion.
    return infer_arch(load_pth(source, mmap=True))
