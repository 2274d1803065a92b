"""Starting points of a training run: a fresh initialisation or weights from a checkpoint.

Fresh weights come from the model's own `weight_init` ("paper", "glorot", "torchvision"). A
deeper net can start from a trained A (section 3.1): the layers of
`recipe.WARM_START_LAYERS` are copied, the rest stay random. A net of the same architecture
(S=384 from S=256, jitter fine-tuning, a converted torchvision model) copies every layer.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vgg_flax.models import arch
from vgg_flax.train import recipe

HEAD = ("fc6", "fc7", "fc8")  # the classifier's layers
# Where threefry's rounds stay a rolled loop (`_unrolled_threefry` not in effect), variables of
# at least this many bytes get an initialisation program of their own: VGG16's fc6 (411 MB)
# and fc7 (67 MB); smaller nets keep one program (each costs a compilation).
OWN_PROGRAM_BYTES = 64 * 2**20
# XLA:CPU's copy insertion with region analysis shares threefry's loop buffers: drawing one
# normal tensor then holds two more tensors of its size instead of three (VGG16's fc6: 411 MB
# less). Copy insertion only places buffers; the values are the same.
_INIT_OPTIONS = {"cpu": {"xla_cpu_copy_insertion_use_region_analysis": True}}


def init_variables(
    model: Any, key: jax.Array, image_size: int, *, own_program_bytes: int | None = None
) -> dict[str, Any]:
    """Fresh variables of `model` for square inputs of `image_size` (params, batch_stats).

    The values are exactly `jax.jit(model.init)(key, images)`'s. `model.init` is traced once
    per model (`_init_jaxpr`) and compiled with threefry's rounds unrolled on a CPU
    (`_unrolled_threefry`): about four times faster to draw, and each normal tensor is drawn
    straight into its variable, so one program holds little more than the parameters (VGG16:
    0.85 GB at its peak for 0.55 GB of parameters). With `own_program_bytes` (default: only
    where the rounds stay a rolled loop, `OWN_PROGRAM_BYTES`), each variable of at least that
    many bytes is made by a program of its own, largest first, and the rest by one more, so
    their temporaries never coexist: the rolled loop holds about three more tensors of a
    drawn tensor's size (two with `_INIT_OPTIONS`), which for VGG16's fc6 (411 MB) had put the
    peak near four times the parameters' size. Each program is the one jaxpr with every other
    output pruned, so each variable gets the same key and the same arithmetic.
    """
    like = jax.ShapeDtypeStruct(jnp.shape(key), key.dtype)  # typed or raw uint32 keys
    closed, treedef = _init_jaxpr(model, image_size, like)
    sizes = [aval.size * aval.dtype.itemsize for aval in closed.out_avals]
    values: list[Any] = [None] * len(sizes)
    with _unrolled_threefry() as unrolled:  # read when lowering: each program's first call
        if own_program_bytes is None:
            own_program_bytes = sum(sizes) + 1 if unrolled else OWN_PROGRAM_BYTES
        for group in _groups(sizes, own_program_bytes):
            program = _jitted_init(model, image_size, like, group)
            for index, value in zip(group, program(key), strict=True):
                values[index] = value
    return dict(jax.tree.unflatten(treedef, values))


def _groups(sizes: list[int], own_program_bytes: int) -> list[tuple[int, ...]]:
    """Leaf indices per program: each large leaf alone, largest first, then all the others."""
    large = sorted(
        (i for i, size in enumerate(sizes) if size >= own_program_bytes), key=lambda i: -sizes[i]
    )
    rest = tuple(i for i in range(len(sizes)) if i not in large)
    return [(i,) for i in large] + ([rest] if rest else [])


@functools.cache
def _init_jaxpr(model: Any, image_size: int, key: jax.ShapeDtypeStruct) -> tuple[Any, Any]:
    """`model.init` as one jaxpr of a key like `key`, and its output tree: Flax runs once.

    Tracing the net is what a filled compilation cache cannot save; each group's program
    replays this jaxpr instead of tracing `model.init` again (jit's tracing prunes what the
    group does not return). The input's values never reach the parameters: zeros inside.
    """
    treedef = None

    def init(key: jax.Array) -> list[jax.Array]:
        nonlocal treedef
        images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        leaves, treedef = jax.tree.flatten(model.init(key, images, train=False))
        return leaves

    return jax.make_jaxpr(init)(key), treedef


@functools.cache
def _jitted_init(
    model: Any, image_size: int, key: jax.ShapeDtypeStruct, leaves: tuple[int, ...]
) -> Any:
    # One compiled program per group (eager init compiles every layer's ops one by one), kept
    # per model.
    closed, _ = _init_jaxpr(model, image_size, key)

    def init(key: jax.Array) -> list[jax.Array]:
        every = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, key)
        return [every[i] for i in leaves]

    return jax.jit(init, compiler_options=_INIT_OPTIONS.get(jax.default_backend(), {}))


@contextlib.contextmanager
def _unrolled_threefry() -> Iterator[bool]:
    """Programs lowered inside hash random bits with threefry unrolled on a CPU too.

    JAX lowers threefry on XLA:CPU as a rolled loop of its five rounds (a smaller program to
    compile): every round then writes whole tensors, and drawing VGG's fc6 (103M normals) takes
    about four times as long as with the rounds unrolled into one fused loop, JAX's lowering on
    every other backend. The arithmetic is the same uint32 operations in the same order, so the
    bits are identical. JAX keeps the rule in private tables: where they differ (another JAX
    version), nothing changes. Yields whether the rounds are unrolled.
    """
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32

        primitive = threefry2x32.threefry2x32_p
        cpu_rules = mlir._platform_specific_lowerings["cpu"]
        unrolled = mlir._lowerings[primitive]  # the default rule: unrolled rounds
        rolled = cpu_rules[primitive]
    except (ImportError, AttributeError, KeyError):
        yield jax.default_backend() != "cpu"  # other backends unroll by default
        return
    cpu_rules[primitive] = unrolled
    try:
        yield True
    finally:
        cpu_rules[primitive] = rolled


def warm_start_layers(source_arch: Any, target_arch: Any) -> dict[str, str]:
    """Which layers to copy from a trained `source_arch` net into a `target_arch` net.

    Each is a Table 1 name or a layer list. The same layer list copies every layer; A into a
    deeper net uses the paper's mapping.
    """
    source, target = arch.layer_list(source_arch), arch.layer_list(target_arch)
    if source == target:
        names = [layer.name for layer in arch.layers(source) if layer.kind == "conv"]
        return {name: name for name in [*names, "fc6", "fc7", "fc8"]}
    if source == arch.ARCHS["A"]:
        return dict(recipe.WARM_START_LAYERS)
    raise ValueError(
        f"cannot start a {arch.arch_label(target_arch)} net from a trained "
        f"{arch.arch_label(source_arch)}: only the same architecture or a trained A (the "
        "paper's warm start) is supported"
    )


def classes_of(variables: Mapping[str, Any]) -> int | None:
    """The number of classes of `variables`' fc8 (None: no classifier)."""
    fc8 = variables.get("params", {}).get("fc8")
    return None if fc8 is None else int(jnp.shape(fc8["kernel"])[-1])


def with_fresh_head(
    mapping: Mapping[str, str], source: Mapping[str, Any], variables: Mapping[str, Any]
) -> tuple[dict[str, str], str | None]:
    """`mapping` without the head layers that cannot be copied, and a note saying which.

    Fine-tuning keeps every other copied layer and freshly initialised ones for: fc8, when the
    source's number of classes differs from the target's (a 1000-class ImageNet net on a
    two-class folder); fc6, fc7 and fc8, when the source has no classifier (features-only
    weights). The note is None when nothing was left out.
    """
    params = source.get("params", {})
    lacking = [dst for src, dst in mapping.items() if dst in HEAD and src not in params]
    if lacking:
        kept = {src: dst for src, dst in mapping.items() if dst not in lacking}
        return kept, f"{', '.join(lacking)} start afresh (the weights have no classifier)"
    theirs, ours = classes_of(source), classes_of(variables)
    if "fc8" not in mapping.values() or theirs == ours:
        return dict(mapping), None
    kept = {src: dst for src, dst in mapping.items() if dst != "fc8"}
    return kept, f"fc8 starts afresh ({theirs} classes in the weights, {ours} in this run)"


def copy_layers(
    variables: Mapping[str, Any], source: Mapping[str, Any], mapping: Mapping[str, str]
) -> dict[str, Any]:
    """`variables` with the layers of `mapping` (source name -> target name) taken from `source`.

    BatchNorm layers that follow a copied conv (bnB_I) come along when both nets have them.
    Shapes must agree exactly; a missing layer or a shape mismatch raises ValueError.
    """
    out = {collection: dict(tree) for collection, tree in variables.items()}
    pairs = dict(mapping)
    for src, dst in mapping.items():
        if dst not in out["params"]:
            known = ", ".join(out["params"])
            raise ValueError(f"the target net has no layer {dst!r}; it has {known}")
        bn_src, bn_dst = "bn" + src[len("conv") :], "bn" + dst[len("conv") :]
        if src.startswith("conv") and bn_src in source["params"] and bn_dst in out["params"]:
            pairs[bn_src] = bn_dst  # the BatchNorm right after a copied conv
    for src, dst in pairs.items():
        for collection, tree in out.items():
            if dst not in tree:
                continue
            if src not in source.get(collection, {}):
                raise ValueError(
                    f"the checkpoint has no layer {src!r} in {collection!r}; is it a VGG-A "
                    "or a net of the same architecture?"
                )
            tree[dst] = _checked_copy(source[collection][src], tree[dst], f"{collection}/{dst}")
    return out


def _checked_copy(new: Any, old: Any, where: str) -> Any:
    def check(a: Any, b: Any) -> jax.Array:
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"shape mismatch at {where}: checkpoint {jnp.shape(a)} vs model {jnp.shape(b)}; "
                "start that layer afresh: add it to the config's init_skip"
            )
        return jnp.asarray(a, dtype=jnp.asarray(b).dtype)

    if jax.tree.structure(new) != jax.tree.structure(old):
        raise ValueError(f"layer {where} has different entries in the checkpoint and the model")
    return jax.tree.map(check, new, old)
