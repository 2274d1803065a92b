"""Checkpoints on disk: every Orbax call of vgg-flax lives in this module.

A model checkpoint is one Orbax directory with two items: `variables` (the Flax variables) and
`metadata` (JSON: the model's architecture fields, so `vgg_flax.load` can rebuild the module, and
its usage record, `vgg_flax.weights.usage.to_metadata`). Knows nothing of the module itself.
A training run's step directories (`checkpoints/<step>`) read as model checkpoints too.
Every checkpoint written here records `content_sha256`, a SHA-256 over its arrays (names, dtypes,
shapes and bytes); reading one recomputes it, so a flipped bit in the data is refused, not loaded.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import numbers
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vgg_flax.models import arch as arch_lib
from vgg_flax.models.arch import ARCHITECTURE_FIELDS
from vgg_flax.weights.atomic import check_output

HASH_KEY = "content_sha256"
MOMENTUM_KEY = "momentum_saved"  # False: a step written without the optimiser's buffers


class CorruptCheckpointError(ValueError):
    """A checkpoint whose arrays no longer match the hash recorded when it was written."""


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (a full disk, a file size limit); nothing was left."""


class _OneErrorNotMany(logging.Filter):
    """Drops Orbax's per-thread tracebacks of a failed write: the error is raised once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "raised an exception" not in record.getMessage()


@contextlib.contextmanager
def _one_error_not_many() -> Iterator[None]:
    """Quiet the echoes of one failed Orbax write: its threads' logged tracebacks, and the
    "Event loop is closed" callbacks of writes still in flight after Orbax closed its loop."""
    quiet, absl_log, previous = _OneErrorNotMany(), logging.getLogger("absl"), sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not (
            isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)
        ):
            previous(unraisable)

    absl_log.addFilter(quiet)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        absl_log.removeFilter(quiet)


def content_hash(tree: Any) -> str:
    """SHA-256 over a tree's arrays: each leaf's path, dtype, shape and bytes, in path order.

    Paths are normalised (dict keys, attribute names and indices alike), so a tree restored as
    dicts hashes like the dataclasses and tuples it was saved from.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    digest = hashlib.sha256()
    for path, leaf in sorted(((_path(p), leaf) for p, leaf in leaves), key=lambda x: x[0]):
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{path}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.view(np.uint8).data)
    return digest.hexdigest()


def _path(path: tuple[Any, ...]) -> str:
    names = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return "/".join(map(str, names))


def verify(tree: Any, recorded: Any, where: str) -> None:
    """Refuse `tree` unless its `content_hash` is `recorded` (None: written before hashes)."""
    if recorded is None:
        return
    actual = content_hash(tree)
    if actual != recorded:
        raise CorruptCheckpointError(
            f"checkpoint {where} is corrupt: its arrays hash to {actual[:16]}..., not the "
            f"{str(recorded)[:16]}... recorded when it was written; use another copy"
        )


def check_metadata(metadata: Mapping[str, Any], where: str) -> None:
    """Refuse metadata that cannot describe a VGG (unknown arch, non-positive sizes, ...)."""
    problems = []
    arch = metadata.get("arch")
    width = metadata.get("width", 1.0)
    if not _positive(width, numbers.Real):
        problems.append(f"width {width!r} is not a positive number")
        width = 1.0
    if isinstance(arch, str) and arch not in arch_lib.ARCHS:
        problems.append(f"arch {arch!r} is not one of {', '.join(arch_lib.ARCHS)}")
    elif isinstance(arch, list | tuple):
        try:
            arch_lib.layers(tuple(arch), width)
        except Exception as error:  # any fault in a layer list
            problems.append(f"arch {arch!r} is not a valid layer list ({error})")
    elif not isinstance(arch, str):
        problems.append(f"arch {arch!r} is neither a name nor a layer list")
    for field in ("num_classes", "head_width"):
        if field in metadata and not _positive(metadata[field], numbers.Integral):
            problems.append(f"{field} {metadata[field]!r} is not a positive integer")
    if "batch_norm" in metadata and not isinstance(metadata["batch_norm"], bool):
        problems.append(f"batch_norm {metadata['batch_norm']!r} is not true or false")
    if metadata.get("pooling", "max") not in arch_lib.POOLINGS:
        problems.append(f"pooling {metadata['pooling']!r} is not one of {arch_lib.POOLINGS}")
    if problems:
        raise ValueError(f"checkpoint {where} has invalid metadata: {'; '.join(problems)}")


def _positive(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool) and value > 0


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
    path = check_output(directory, new=True)
    try:  # refused now rather than half-way through Orbax's save
        json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata for {path} is not strict JSON: {error}") from error
    state = jax.tree.map(jax.device_get, dict(variables))
    _remove_partial(path)  # left by an earlier save that was killed
    try:
        with _one_error_not_many(), _checkpointer() as checkpointer:
            checkpointer.save(
                path,
                ocp.args.Composite(
                    variables=ocp.args.StandardSave(state),
                    metadata=ocp.args.JsonSave({**metadata, HASH_KEY: content_hash(state)}),
                ),
            )
    except Exception as error:  # a full disk, a file size limit: leave nothing behind
        with _one_error_not_many():
            _remove_partial(path, settle_s=3.0)
        raise CheckpointWriteError(
            f"could not write the checkpoint {path}: {error}. Nothing was left behind; free "
            "disk space (or lift the file size limit) and run again"
        ) from error
    except BaseException:  # Ctrl-C: leave nothing half-written behind either
        _remove_partial(path)
        raise
    return path


def _remove_partial(path: str, settle_s: float = 0.0) -> None:
    """Remove Orbax's temporary folders for `path` (it renames them onto `path` when done).

    `settle_s`: keep removing until none has reappeared for that long (at most 30 s): after a
    failed write, Orbax's writers still in flight recreate folders there for a second or two.
    """
    deadline = time.monotonic() + 30.0
    quiet_since = time.monotonic()
    while True:
        partials = glob.glob(f"{glob.escape(path)}.orbax-checkpoint-tmp*")
        for partial in partials:
            with contextlib.suppress(OSError):
                shutil.rmtree(partial)
        now = time.monotonic()
        if partials:
            quiet_since = now
        if now - quiet_since >= settle_s or now > deadline:
            return
        time.sleep(0.05)


def read_model(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(variables, metadata)` of a directory written by `save_model`, arrays in host memory.

    A training step directory (or a run's `checkpoints/` folder: its latest step) gives the
    model's params and BatchNorm statistics, with the step's metadata. Raises
    `CorruptCheckpointError` when the arrays differ from the recorded content hash, and
    ValueError for metadata that cannot describe a VGG, both naming the directory.
    """
    path = _existing(directory)
    if _is_training_step(path):
        return _read_training_step(path)
    with _checkpointer() as checkpointer:
        try:
            restored = checkpointer.restore(
                path,
                ocp.args.Composite(
                    variables=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # Orbax raises many types for damaged files
            raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {error}") from error
    variables, metadata = dict(restored["variables"]), dict(restored["metadata"])
    check_metadata(metadata, path)
    verify(variables, metadata.get(HASH_KEY), path)
    return variables, metadata


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a directory written by `save_model` (no arrays are read)."""
    path = _existing(directory)
    item = "meta" if _is_training_step(path) else "metadata"
    with _checkpointer() as checkpointer:
        restored = checkpointer.restore(path, ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
    return dict(restored[item])


def _existing(directory: str | os.PathLike) -> str:
    """The absolute checkpoint path (a run's `checkpoints/` folder: its latest step)."""
    path = os.path.abspath(os.fspath(directory))
    steps = sorted(int(name) for name in _listdir(path) if name.isdigit())
    if not os.path.isdir(os.path.join(path, "variables")) and not _is_training_step(path):
        if steps and _is_training_step(os.path.join(path, str(steps[-1]))):
            return os.path.join(path, str(steps[-1]))
        raise ValueError(
            f"{path} is not a vgg-flax checkpoint (no 'variables' item, nor a training step's "
            "'state' and 'meta'); write one with vgg_flax.save or `vgg-flax convert`, or pass a "
            "training run's model/ or checkpoints/<step> folder"
        )
    return path


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _is_training_step(path: str) -> bool:
    """A step directory of `training_manager`: items `state` and `meta`, no `variables`."""
    return all(os.path.isdir(os.path.join(path, item)) for item in ("state", "meta"))


def _read_training_step(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(variables, metadata)` of a training step directory: the model's part of its state.

    The whole state (optimiser included) is read so that its recorded content hash can be checked.
    """
    with _checkpointer() as checkpointer:
        try:
            restored = checkpointer.restore(
                path,
                ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
            )
        except Exception as error:  # Orbax raises many types for damaged files
            raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {error}") from error
    state, metadata = dict(restored["state"]), dict(restored["meta"])
    check_metadata(metadata, path)
    verify(state, metadata.get(HASH_KEY), path)
    variables = {"params": state["params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return variables, metadata


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


def without_momentum(state: Any) -> Any:
    """`state` with its optimiser's per-parameter buffers (SGD's momentum) as None.

    The scalars stay: the schedule's step count and the plateau rule's best accuracy and drops,
    so a run resumed from such a step keeps its learning rate; only momentum restarts at zero.
    """
    opt_state = jax.tree.map(lambda x: x if np.ndim(x) == 0 else None, state["opt_state"])
    return {**state, "opt_state": opt_state}


def save_training(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    meta: Mapping[str, Any],
    *,
    momentum: bool = True,
) -> None:
    """Write training `state` and JSON `meta` (with the model's architecture) as checkpoint `step`.

    `meta` needs every field of `vgg_flax.models.arch.ARCHITECTURE_FIELDS`, so that a resumed run
    can tell whether the checkpoint belongs to its network. `momentum=False` leaves the
    optimiser's per-parameter buffers out (`without_momentum`): about a third of the size for
    SGD with momentum, at the price of a resume that restarts momentum from zero.
    """
    missing = [key for key in ARCHITECTURE_FIELDS if key not in meta]
    if missing:
        raise ValueError(
            f"training checkpoint metadata lacks {missing}; pass vgg_flax.architecture(model)"
        )
    if step in manager.all_steps():
        return  # already written (e.g. the final save right after a periodic one)
    if not momentum:
        state = without_momentum(state)
    meta = {**meta, HASH_KEY: content_hash(state), MOMENTUM_KEY: momentum}
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
    `vgg_flax.architecture`) differs from the run's, and one that cannot be read back
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
    saved_momentum = meta.get(MOMENTUM_KEY, True)
    shaped = target if target is None or saved_momentum else without_momentum(target)
    abstract = None if shaped is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, shaped)
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    except Exception as error:
        raise ValueError(
            f"checkpoint {where} is corrupt or does not match this run's state: {error}; "
            "delete that step directory to resume from the one before"
        ) from error
    try:
        verify(restored["state"], meta.get(HASH_KEY), where)
    except CorruptCheckpointError as error:
        raise CorruptCheckpointError(
            f"{error}; delete that step directory to resume from the one before"
        ) from None
    state = restored["state"]
    if target is not None and not saved_momentum:
        state = jax.tree.map(lambda fresh, saved: fresh if saved is None else saved, target, state)
    return state, dict(meta)
