"""Data parallelism: one mesh axis over every device, batches sharded, parameters replicated.

Also the host-level reductions of work that each host does on its own data (evaluation).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named "data" over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_mesh() -> Mesh:
    """A "data" mesh over this host's devices only, for work each host does on its own data."""
    return make_mesh(jax.local_devices())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, optimiser state)."""
    return NamedSharding(mesh, PartitionSpec())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Rows this host feeds per step; checks the global batch splits evenly over devices."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"global batch size {global_batch_size} does not split over {devices} devices; "
            f"use a multiple of {devices}"
        )
    return global_batch_size // jax.process_count()


def to_global(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble each host's rows (a pytree of numpy arrays) into global arrays sharded by batch."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def host_sum(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over hosts of each host's `values` (same shape and dtype on every host).

    Every host must call it (a collective); on one host it returns `values` unchanged.
    """
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0, dtype=values.dtype)


def host_concat(rows: np.ndarray) -> np.ndarray:
    """Every host's `rows` (any number, same trailing shape), concatenated in host order.

    Every host must call it (a collective) and gets the whole result; on one host it returns
    `rows` unchanged. The all-gather needs equal shapes, so rows are padded to the longest.
    """
    rows = np.asarray(rows)
    if jax.process_count() == 1:
        return rows
    counts = np.asarray(multihost_utils.process_allgather(np.array([len(rows)], np.int32)))
    padded = np.zeros((int(counts.max()), *rows.shape[1:]), rows.dtype)
    padded[: len(rows)] = rows
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return np.concatenate([part[:n] for part, n in zip(gathered, counts.ravel(), strict=True)])
