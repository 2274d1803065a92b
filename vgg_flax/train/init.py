"""Starting points of a training run: a fresh initialisation or weights from a checkpoint.

Fresh weights come from the model's own `weight_init` ("paper", "glorot", "torchvision"). A
deeper net can start from a trained A (section 3.1): the layers of
`recipe.WARM_START_LAYERS` are copied, the rest stay random. A net of the same architecture
(S=384 from S=256, jitter fine-tuning, a converted torchvision model) copies every layer.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vgg_flax.models import arch
from vgg_flax.train import recipe

HEAD = ("fc6", "fc7", "fc8")  # the classifier's layers
# Variables of at least this many bytes get an initialisation program of their own: VGG16's
# fc6 (411 MB) and fc7 (67 MB); smaller nets keep one program (each costs a compilation).
OWN_PROGRAM_BYTES = 64 * 2**20
# XLA:CPU's copy insertion with region analysis shares threefry's loop buffers: drawing one
# normal tensor then holds two more tensors of its size instead of three (VGG16's fc6: 411 MB
# less). Copy insertion only places buffers; the values are the same.
_INIT_OPTIONS = {"cpu": {"xla_cpu_copy_insertion_use_region_analysis": True}}


def init_variables(
    model: Any, key: jax.Array, image_size: int, *, own_program_bytes: int = OWN_PROGRAM_BYTES
) -> dict[str, Any]:
    """Fresh variables of `model` for square inputs of `image_size` (params, batch_stats).

    The values are exactly `jax.jit(model.init)(key, images)`'s, but each variable of at least
    `own_program_bytes` is made by a program of its own, largest first, and the rest by one
    more, so their temporaries never coexist: drawing a normal tensor on XLA:CPU holds about
    three more tensors of its size (threefry's rolled loop; two with `_INIT_OPTIONS`), which
    for VGG16's fc6 (411 MB) had put the initialisation's peak near four times the parameters'
    size. Each program is
    `model.init` with every other output pruned by XLA, so each variable gets the same key and
    the same arithmetic as in the one-program init.
    """
    shapes = jax.eval_shape(functools.partial(model.init, train=False), key, _images(image_size))
    leaves, treedef = jax.tree.flatten(shapes)
    values: list[Any] = [None] * len(leaves)
    sizes = [leaf.size * leaf.dtype.itemsize for leaf in leaves]
    for group in _groups(sizes, own_program_bytes):
        for index, value in zip(group, _jitted_init(model, image_size, group)(key), strict=True):
            values[index] = value
    return dict(jax.tree.unflatten(treedef, values))


def _groups(sizes: list[int], own_program_bytes: int) -> list[tuple[int, ...]]:
    """Leaf indices per program: each large leaf alone, largest first, then all the others."""
    large = sorted(
        (i for i, size in enumerate(sizes) if size >= own_program_bytes), key=lambda i: -sizes[i]
    )
    rest = tuple(i for i in range(len(sizes)) if i not in large)
    return [(i,) for i in large] + ([rest] if rest else [])


def _images(image_size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)


@functools.cache
def _jitted_init(model: Any, image_size: int, leaves: tuple[int, ...]) -> Any:
    # One compiled program per group (eager init compiles every layer's ops one by one), kept
    # per model. The input's values never reach the parameters: zeros made inside the program.
    def init(key: jax.Array) -> list[jax.Array]:
        images = jnp.zeros(_images(image_size).shape, jnp.float32)
        every = jax.tree.leaves(model.init(key, images, train=False))
        return [every[i] for i in leaves]

    return jax.jit(init, compiler_options=_INIT_OPTIONS.get(jax.default_backend(), {}))


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
