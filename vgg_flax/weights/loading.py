"""One loader for every kind of weights: `load(source) -> (model, variables)`, and `save`.

A source is a vgg-flax checkpoint directory (written by `save`, `vgg-flax convert` or a training
run's `model/`), a torchvision `.pth` file, or a state dict (name -> array). The architecture
comes from the checkpoint's metadata, or from the state dict's tensor shapes when not given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vgg_flax import formats
from vgg_flax.formats.pth import load_pth
from vgg_flax.formats.torchvision import from_torchvision, infer_arch
from vgg_flax.models.vgg import ARCHITECTURE_FIELDS, VGG, architecture, create_model
from vgg_flax.weights import checkpoint

Variables = dict[str, Any]


def load(
    source: str | os.PathLike | Mapping[str, Any],
    arch: str | None = None,
    *,
    head: str = "auto",
    **options: Any,
) -> tuple[VGG, Variables]:
    """`(model, variables)` from a checkpoint directory, a `.pth` file or a state dict.

    Keras `.h5` files and Caffe `.caffemodel` files (the authors' VGG16/VGG19) load too; their
    architecture comes from the file (`arch`, if given, is checked against it).

    `arch` names a torchvision architecture (e.g. "vgg16_bn") for `.pth` files and state dicts;
    by default it is inferred from the tensors' shapes. `head` ("auto", "keep", "drop") is
    `from_torchvision`'s. `options` are further `VGG` fields (dropout_rate, dtype, kernels, ...);
    a `param_dtype` among them also casts the loaded arrays.
    """
    param_dtype = options.get("param_dtype")
    if isinstance(source, str | os.PathLike) and os.path.isdir(source):
        variables, metadata = checkpoint.read_model(source)  # hash and metadata checked
        spec = {key: metadata[key] for key in ARCHITECTURE_FIELDS if key in metadata}
        model = create_model(**spec, **options)
    elif formats.is_foreign_file(source):  # Keras .h5 or Caffe .caffemodel
        variables = formats.read(source, head=head, dtype=param_dtype)
        model = formats.model_for(variables, arch, **options)
    elif isinstance(source, Mapping) or _is_pth(source):
        arch = arch or _infer(source)
        variables = from_torchvision(source, arch, head=head, dtype=param_dtype)
        params = variables["params"]
        num_classes = int(params["fc8"]["bias"].shape[0]) if "fc8" in params else 1000
        model = create_model(arch, num_classes=num_classes, **options)
    else:
        raise ValueError(
            f"{os.fspath(source)!r} is neither a vgg-flax checkpoint directory, a torchvision "
            ".pth file, a Keras .h5 file nor a Caffe .caffemodel"
        )
    cast = (lambda x: jnp.asarray(x, param_dtype)) if param_dtype else jnp.asarray
    return model, jax.tree.map(cast, variables)


def save(
    directory: str | os.PathLike, model: VGG, variables: Mapping[str, Any], **metadata: Any
) -> str:
    """Write `variables` with `model`'s architecture (and `metadata`) for `load`; atomic.

    Returns the absolute path of the new checkpoint directory (which must not exist yet).
    """
    return checkpoint.save_model(directory, variables, {**metadata, **architecture(model)})


def recorded_preprocessing(source: str | os.PathLike) -> str | None:
    """The input preprocessing the weights at `source` expect, where it is known.

    A vgg-flax checkpoint's recorded "preprocessing" (written by `vgg-flax convert` and by
    training runs); for a weight file, `formats.preset_for_file` (the registry's preset, else
    "caffe" for Keras and Caffe files and "torchvision" for `.pth` files); None otherwise.
    """
    if os.path.isdir(source):
        return checkpoint.read_metadata(source).get("preprocessing")
    return formats.preset_for_file(source) if os.path.isfile(source) else None


def recorded_metadata(source: str | os.PathLike) -> dict[str, Any]:
    """What a vgg-flax checkpoint directory records beside its arrays ({} for weight files).

    Training runs record "preprocessing", "input_size" (the crop size), "train_scale",
    "eval_scale", "train_flip" and "class_names" where the dataset has them.
    """
    return checkpoint.read_metadata(source) if os.path.isdir(source) else {}


def _is_pth(source: Any) -> bool:
    return isinstance(source, str | os.PathLike) and os.path.isfile(source)


def _infer(source: Any) -> str:
    if isinstance(source, Mapping):
        return infer_arch(source)
    # A memory map reads only the file's index; the tensors are read once, by the conversion.
    return infer_arch(load_pth(source, mmap=True))
