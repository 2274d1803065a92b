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

from vgg_flax import arch
from vgg_flax.train import recipe


def init_variables(model: Any, key: jax.Array, image_size: int) -> dict[str, Any]:
    """Fresh variables of `model` for square inputs of `image_size` (params, batch_stats)."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return dict(_jitted_init(model)(key, images))


@functools.cache
def _jitted_init(model: Any) -> Any:
    # One compiled program (eager init compiles every layer's ops one by one), kept per model.
    return jax.jit(functools.partial(model.init, train=False))


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
                "for another number of classes, start fc8 afresh (set init_skip=('fc8',))"
            )
        return jnp.asarray(a, dtype=jnp.asarray(b).dtype)

    if jax.tree.structure(new) != jax.tree.structure(old):
        raise ValueError(f"layer {where} has different entries in the checkpoint and the model")
    return jax.tree.map(check, new, old)
