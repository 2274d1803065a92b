"""Data parallelism for NNX models: their state replicated over the "data" mesh.

The mesh and the shardings are `vgg_flax.parallel`'s (one axis over every device); batches are
split over it with `vgg_flax.parallel.to_global` (or `jax.device_put(x, batch_sharding(mesh))`),
and `nnx.jit` with replicated state and a sharded batch inserts the gradient all-reduce, as the
Linen training step does.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from vgg_flax.parallel import replicated


def replicate(mesh: Mesh, *nodes: Any) -> None:
    """Put every variable of `nodes` (models, `nnx.Optimizer`s) on every device of `mesh`.

    In place: the nodes' arrays are replaced by copies replicated over the mesh.
    """
    state = nnx.state(nodes)
    nnx.update(nodes, jax.device_put(state, replicated(mesh)))
