"""Checkpoints on disk: every Orbax call of vgg-flax lives in this module.

A model checkpoint is one Orbax directory with two items: `variables` (the Flax variables) and
`metadata` (JSON: the model's architecture fields, so `vgg_flax.load` can rebuild the module).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from vgg_flax.model import ARCHITECTURE_FIELDS


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
        raise ValueError("metadata needs an 'arch' entry (e.g. 'D') so load() can rebuild it")
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


def read_model(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(variables, metadata)` of a directory written by `save_model`, arrays in host memory."""
    path = _existing(directory)
    with _checkpointer() as checkpointer:
        restored = checkpointer.restore(
            path,
            ocp.args.Composite(
                variables=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()
            ),
        )
    return dict(restored["variables"]), dict(restored["metadata"])


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a directory written by `save_model` (no arrays are read)."""
    path = _existing(directory)
    with _checkpointer() as checkpointer:
        restored = checkpointer.restore(path, ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return dict(restored["metadata"])


def _existing(directory: str | os.PathLike) -> str:
    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(os.path.join(path, "variables")):
        raise ValueError(
            f"{path} is not a vgg-flax checkpoint (no 'variables' item); write one with "
            "vgg_flax.save or `vgg-flax convert`"
        )
    return path


# --- Training checkpoints (vgg_flax.train): one Orbax CheckpointManager per run ---
# Each step directory holds `state` (params, batch_stats, optimiser state, step, RNG key data) and
# `meta` (JSON: the model's architecture fields and the input iterator's position).


def training_manager(directory: str | os.PathLike, *, keep: int = 2) -> ocp.CheckpointManager:
    """A manager for `directory` that keeps the latest `keep` step checkpoints.

    Saves are synchronous (the train step donates its state buffers, so they must be on disk
    before the next step) and atomic (written to a temporary folder, then renamed); temporary
    folders left by a killed run are removed on start.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    path = os.path.abspath(os.fspath(directory))
    return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))


def save_training(
    manager: ocp.CheckpointManager, step: int, state: Any, meta: Mapping[str, Any]
) -> None:
    """Write training `state` and JSON `meta` (with the model's architecture) as checkpoint `step`.

    `meta` needs every field of `vgg_flax.model.ARCHITECTURE_FIELDS`, so that a resumed run can
    tell whether the checkpoint belongs to its network.
    """
    missing = [key for key in ARCHITECTURE_FIELDS if key not in meta]
    if missing:
        raise ValueError(
            f"training checkpoint metadata lacks {missing}; pass vgg_flax.architecture(model)"
        )
    if step in manager.all_steps():
        return  # already written (e.g. the final save right after a periodic one)
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
        ),
        force=True,
    )


def restore_training(
    manager: ocp.CheckpointManager, target: Any | None, identity: Mapping[str, Any]
) -> tuple[Any, dict[str, Any]] | None:
    """The latest `(state, meta)` in `manager`, shaped and sharded like `target`; None if empty.

    With `target` None the state comes back as saved, in host memory (for inspection).
    Refuses, with ValueError, a checkpoint whose `identity` (the architecture fields of
    `vgg_flax.model.architecture`) differs from the run's, and one that cannot be read back
    (corrupt or truncated files).
    """
    step = manager.latest_step()
    if step is None:
        return None
    where = os.path.join(str(manager.directory), str(step))
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as error:  # Orbax raises many types for damaged files
        raise ValueError(f"checkpoint {where} is corrupt (unreadable metadata): {error}") from error
    theirs = {key: meta.get(key) for key in identity}
    ours = dict(identity)
    if theirs != ours:
        raise ValueError(
            f"checkpoint {where} belongs to another network ({theirs}), not this run's {ours}; "
            "use a new workdir, or pass the checkpoint as init_from to start from its weights"
        )
    abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    except Exception as error:
        raise ValueError(
            f"checkpoint {where} is corrupt or does not match this run's state: {error}; "
            "delete that step directory to resume from the one before"
        ) from error
    return restored["state"], dict(meta)
