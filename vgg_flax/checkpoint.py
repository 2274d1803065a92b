"""Checkpoints on disk: every Orbax call of vgg-flax lives in this module.

A model checkpoint is one Orbax directory with two items: `variables` (the Flax variables) and
`metadata` (JSON: at least the architecture name, so `load` can rebuild the module).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from vgg_flax.model import VGG, create_model

# Metadata keys passed on to `create_model` besides "arch"; other keys are only recorded.
_MODEL_OPTIONS = ("batch_norm", "num_classes")


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_model(
    directory: str | os.PathLike, variables: Mapping[str, Any], metadata: Mapping[str, Any]
) -> str:
    """Write `variables` and JSON `metadata` (needs "arch") to a new Orbax directory, atomically.

    Orbax writes into a temporary folder and renames it when complete, so a crash never leaves a
    half-written checkpoint under `directory`. Returns the absolute path written.
    """
    if "arch" not in metadata:
        raise ValueError("metadata needs an 'arch' entry (e.g. 'vgg16') so load() can rebuild it")
    path = os.path.abspath(os.fspath(directory))
    if os.path.exists(path):
        raise ValueError(f"{path} already exists; choose a new directory or remove the old one")
    state = jax.tree.map(jax.device_get, dict(variables))
    with _checkpointer() as checkpointer:
        checkpointer.save(
            path,
            ocp.args.Composite(
                variables=ocp.args.StandardSave(state),
                metadata=ocp.args.JsonSave(dict(metadata)),
            ),
        )
    return path


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata recorded beside a checkpoint's variables."""
    path = _existing(directory)
    with _checkpointer() as checkpointer:
        restored = checkpointer.restore(path, ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return dict(restored["metadata"])


def load(directory: str | os.PathLike) -> tuple[VGG, dict[str, Any]]:
    """Rebuild `(model, variables)` from a directory written by `save_model` or `convert`."""
    path = _existing(directory)
    with _checkpointer() as checkpointer:
        restored = checkpointer.restore(
            path,
            ocp.args.Composite(
                variables=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()
            ),
        )
    metadata = restored["metadata"]
    options = {key: metadata[key] for key in _MODEL_OPTIONS if key in metadata}
    model = create_model(metadata["arch"], **options)
    return model, jax.tree.map(jnp.asarray, dict(restored["variables"]))


def _existing(directory: str | os.PathLike) -> str:
    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(os.path.join(path, "variables")):
        raise ValueError(
            f"{path} is not a vgg-flax checkpoint (no 'variables' item); write one with "
            "vgg_flax.checkpoint.save_model or `vgg-flax convert`"
        )
    return path
