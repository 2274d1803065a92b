"""Data parallelism: one mesh axis over every device, batches sharded, parameters replicated."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named "data" over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


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
