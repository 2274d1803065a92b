"""The traced training step kept on disk, beside the compilation cache: a rerun skips tracing.

JAX's persistent compilation cache saves a rerun the compile, but not the tracing and lowering
that find the program to look up: for VGG's training step (the net, its gradient through the
custom convolution and pooling rules, the optimiser) that is most of a second on a CPU, about a
third of a warm start. `cached_train_step` keeps the step as a serialized `jax.export.Exported`
under `<compilation cache>/vgg_flax_steps/`; a process that finds its file calls the stored
program instead of tracing the Python again. Both runs, the one that stores it and the one that
reads it, run that stored program, so they compile the same computation and the second finds it
in the compilation cache.

A stored step is used only when everything that shaped it is the same, as one key: the caller's
`identity` (the trainer's: the whole config, the model, the epoch length) and the step function's
name, the shapes, dtypes and shardings of the state and batch, the devices, JAX's tracing
options, the versions of jax, jaxlib, flax and optax, and the source of every vgg_flax module. A
file that cannot be read is traced again and replaced. The trainer uses it with one process only
(a multi-host step is traced as before) and only while the compilation cache is on.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from vgg_flax.parallel import batch_sharding, replicated
from vgg_flax.weights.atomic import atomic_write
from vgg_flax.xla_options import compiler_options

FOLDER = "vgg_flax_steps"
_PACKAGES = ("jax", "jaxlib", "flax", "optax")
Step = Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


def cached_train_step(step: Step, mesh: Mesh, cache: str | os.PathLike, identity: Any) -> Step:
    """`step` (`make_train_step`'s, jitted) read from or stored in `cache`'s step folder.

    Same arguments and results as `step`, the state donated. `identity`: JSON-ready values that
    determine what `step` computes beyond its arguments' shapes (its config). The first call
    with new shapes finds the stored program or traces `step` and stores it. A `step` that is
    not a `jax.jit` function is returned as it is.
    """
    python_step = getattr(step, "__wrapped__", None)  # jit's own function
    if python_step is None:  # not a jitted step (a test's stand-in): nothing to store
        return step
    # The function's name joins the key: a step built elsewhere is stored apart.
    identity = {
        "identity": identity,
        "step": f"{python_step.__module__}.{python_step.__qualname__}",
    }
    folder = Path(cache, FOLDER)
    calls: dict[Any, Callable] = {}  # by the arguments' structure, shapes and shardings

    def run(state: dict[str, Any], batch: dict[str, Any]):
        leaves, treedef = jax.tree.flatten(state)
        batch_leaves, batch_treedef = jax.tree.flatten(batch)
        signature = (treedef, batch_treedef) + tuple(
            (x.shape, x.dtype, x.sharding) for x in (*leaves, *batch_leaves)
        )
        if signature not in calls:
            calls[signature] = _stored_call(
                python_step, treedef, leaves, batch, mesh, folder, identity
            )
        new_leaves, metrics = calls[signature](tuple(leaves), batch)
        return jax.tree.unflatten(treedef, new_leaves), metrics

    return run


def _step_shardings(mesh: Mesh) -> dict[str, Any]:
    """The training step's shardings (as `make_train_step` gives them): state replicated,
    batch split over the mesh, results replicated."""
    return {
        "in_shardings": (replicated(mesh), batch_sharding(mesh)),
        "out_shardings": (replicated(mesh), replicated(mesh)),
    }


def _stored_call(
    python_step: Step,
    treedef: Any,
    leaves: list,
    batch: dict[str, Any],
    mesh: Mesh,
    folder: Path,
    identity: Any,
) -> Callable:
    """A jitted call of the stored step for these arguments (stored first when missing)."""
    path = folder / f"{step_key(identity, (leaves, batch), mesh)}.bin"
    exported = _load(path) or _export(python_step, treedef, leaves, batch, mesh, path)
    return jax.jit(
        exported.call,
        **_step_shardings(mesh),
        donate_argnums=0,
        compiler_options=compiler_options(),
    )


def step_key(identity: Any, arguments: Any, mesh: Mesh) -> str:
    """The stored step's name: a digest of all that shaped it (see the module's text)."""
    arguments_spec = [
        (jax.tree_util.keystr(path), str(leaf.shape), str(leaf.dtype), str(leaf.sharding))
        for path, leaf in jax.tree_util.tree_flatten_with_path(arguments)[0]
    ]
    described = {
        "identity": identity,
        "arguments": arguments_spec,
        "devices": [str(device) for device in mesh.devices.flat],
        "device_kind": mesh.devices.flat[0].device_kind,
        "tracing": _tracing_options(),
        "versions": _versions(),
        "source": _source_digest(),
    }
    text = json.dumps(described, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load(path: Path) -> jax.export.Exported | None:
    """The stored step at `path`, or None when missing or unreadable (then stored again)."""
    if not path.exists():
        return None
    try:
        return jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # noqa: BLE001  # damaged, or another format: traced again and replaced
        return None


def _export(
    python_step: Step, treedef: Any, leaves: list, batch: dict[str, Any], mesh: Mesh, path: Path
) -> jax.export.Exported:
    """Trace `python_step` (the jitted step's own function; its jit options are given again
    here) for these arguments as a flat program, store it at `path`, return it."""

    # Flat state leaves in and out: the optimiser's state classes need no serialization rules.
    def flat_step(leaves: tuple, batch: dict[str, Any]):
        new_state, metrics = python_step(jax.tree.unflatten(treedef, leaves), batch)
        return tuple(jax.tree.leaves(new_state)), metrics

    jitted = jax.jit(flat_step, **_step_shardings(mesh))
    shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        (tuple(leaves), batch),
    )
    exported = jax.export.export(jitted)(*shapes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as file:
            file.write(exported.serialize())
    except (OSError, ValueError):  # a read-only cache: traced again next time
        pass
    return exported


def _tracing_options() -> list[str]:
    """JAX's options that change a trace (x64, precision, PRNG, ...), as jit's own cache keys."""
    try:
        from jax._src import config as jax_config

        context = jax_config.trace_context()
    except (ImportError, AttributeError):  # a JAX without it: the public options that matter
        context = (
            jax.config.jax_enable_x64,
            jax.config.jax_default_matmul_precision,
            jax.config.jax_default_prng_impl,
            jax.config.jax_threefry_partitionable,
        )
    # Values only: an object printed with its address would change the key every run.
    return [repr(value) for value in context if " at 0x" not in repr(value)]


@functools.cache
def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in _PACKAGES}


@functools.cache
def _source_digest() -> str:
    """A digest of every vgg_flax module's source: a code change is a new step."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
