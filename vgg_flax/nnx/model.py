"""The VGG networks as Flax NNX modules: the Linen `VGG` wrapped by `flax.nnx.bridge.ToNNX`.

One implementation serves both front ends: an NNX `VGG` holds the Linen module (its
architecture) and the Linen variables as NNX variables, and runs the Linen module's own
`apply` on them. So the two give the same numbers by construction, the parameters keep their
Linen names (`model.conv1_1["kernel"]`, `model.bn1_1["mean"]`, ...: `nnx.state(model,
nnx.Param)` is the Linen `params` tree, `nnx.state(model, nnx.BatchStat)` its `batch_stats`), and
conversion either way moves the arrays without copying them. `create_model(...,
pretrained=...)` builds one holding published or saved weights, read by `vgg_flax.pretrained` /
`vgg_flax.load` (the Linen loader: one loading path).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import unfreeze
from flax.nnx.bridge import variables as bridge_variables

from vgg_flax.models import arch as arch_lib
from vgg_flax.models import vgg as linen_vgg
from vgg_flax.train.init import init_variables

# Collections an NNX VGG carries; nnx.Param and nnx.BatchStat are their NNX types.
COLLECTIONS = ("params", "batch_stats")
_SHOWN = 5  # variables named in a mismatch error, at most


class VGG(nnx.bridge.ToNNX):
    """A VGG network as an `nnx.Module`; build one with `create_model` or `from_linen`.

    `model(images, train=False, *, mode="classify", features=(), valid_hw=None,
    dropout_masks=None, trained_pool5=None, rngs=None)` takes the arguments of the Linen
    `vgg_flax.VGG.__call__` (modes "classify", "dense", "dense_map"; `features=` returns a dict
    of activations). With `train=True`, BatchNorm normalises with the batch's statistics and
    updates the model's running statistics in place (NNX state, `nnx.BatchStat`), and dropout
    draws from the model's "dropout" stream (the `rngs` it was built with; a call's `rngs`
    replaces them for that call; a stream named "default" serves as well, as in NNX).
    `model.linen` is the Linen module: its fields (arch, batch_norm, width, ...) describe the net.
    """

    def __init__(
        self,
        model: linen_vgg.VGG,
        variables: Mapping[str, Any],
        *,
        rngs: nnx.Rngs | None = None,
    ):
        if not isinstance(model, linen_vgg.VGG):
            raise TypeError(
                f"expected a vgg_flax.VGG Linen module, got {type(model).__name__}; build one "
                "with vgg_flax.create_model or use vgg_flax.nnx.create_model"
            )
        check_variables(model, variables)
        super().__init__(model, rngs)
        wanted = {name: unfreeze(variables[name]) for name in COLLECTIONS if name in variables}
        # The bridge's own conversion: the layout ToNNX.__call__ turns back into Linen variables.
        for layer, values in bridge_variables.linen_vars_to_nnx_attrs(wanted).items():
            setattr(self, layer, values)

    @property
    def linen(self) -> linen_vgg.VGG:
        """The Linen module this network runs (its architecture)."""
        return self.to_nnx__module

    def __call__(
        self,
        images: jax.Array,
        train: bool = False,
        *,
        rngs: nnx.Rngs | None = None,
        **kwargs: Any,
    ) -> jax.Array | dict[str, jax.Array]:
        """Run the network; see the class docstring and the Linen `vgg_flax.VGG.__call__`."""
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            # The bridge would take a bare key as the "params" stream, which dropout never sees.
            raise TypeError(
                f"rngs must be an nnx.Rngs, got {type(rngs).__name__}; for a key k pass "
                "rngs=nnx.Rngs(dropout=k)"
            )
        _check_dropout_rngs(self.linen, train, rngs or self.to_nnx__rngs, kwargs)
        # Training updates BatchNorm's running statistics: the bridge writes them back to self.
        mutable = ["batch_stats"] if train and self.linen.batch_norm else False
        return super().__call__(images, train, rngs=rngs, mutable=mutable, **kwargs)


def _check_dropout_rngs(
    model: linen_vgg.VGG, train: bool, rngs: nnx.Rngs | None, kwargs: Mapping[str, Any]
) -> None:
    drawn = train and model.dropout_rate > 0 and kwargs.get("dropout_masks") is None
    if drawn and (rngs is None or not any(name in rngs for name in ("dropout", "default"))):
        raise ValueError(
            f"train=True runs dropout (dropout_rate={model.dropout_rate}) and this model has no "
            "'dropout' rng stream: build it with rngs=nnx.Rngs(params=0, dropout=1) (or "
            "nnx.Rngs(0)), or pass rngs=nnx.Rngs(dropout=...) to the call"
        )


def check_variables(model: linen_vgg.VGG, variables: Mapping[str, Any]) -> None:
    """Raise ValueError unless `variables` have exactly the names and shapes `model` makes."""
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(
            "expected Linen variables, a mapping with a 'params' collection (what model.init, "
            f"vgg_flax.load and vgg_flax.pretrained give), got {type(variables).__name__}"
        )
    expected = _shapes(variable_shapes(model))
    given = _shapes({name: variables[name] for name in variables})
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{path} {given[path]} (expected {expected[path]})"
        for path in sorted(set(given) & set(expected))
        if given[path] != expected[path]
    ]
    problems = [
        f"{label}: {', '.join(items[:_SHOWN])}{' ...' if len(items) > _SHOWN else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shapes", wrong))
        if items
    ]
    if problems:
        raise ValueError(
            f"the variables do not fit VGG {arch_lib.arch_label(model.arch)} "
            f"(batch_norm={model.batch_norm}, width={model.width}, head_width={model.head_width}, "
            f"num_classes={model.num_classes}): {'; '.join(problems)}; pass the module the "
            "variables were made for (vgg_flax.load returns both)"
        )


@functools.cache  # tracing a net's init takes a second or more; modules are hashable
def variable_shapes(model: linen_vgg.VGG) -> dict[str, Any]:
    """The variables `model` makes, as a tree of `jax.ShapeDtypeStruct` (params, batch_stats)."""
    side = arch_lib.MIN_CLASSIFY_SIZE  # the shapes do not depend on the input's size
    images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    return dict(jax.eval_shape(model.init, jax.random.key(0), images))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(unfreeze(tree))
    return {"/".join(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def create_model(
    arch: str | Sequence[int | str] | None = None,
    *,
    rngs: nnx.Rngs,
    batch_norm: bool = False,
    num_classes: int | None = None,
    pretrained: Any = None,
    **options: Any,
) -> VGG:
    """An NNX VGG, freshly initialised or with pretrained weights (in NNX a module holds them).

    The arguments are `vgg_flax.create_model`'s plus `rngs` (and `arch` defaults to "D",
    `num_classes` to 1000). Fresh parameters come from the "params" stream of `rngs` (or its
    "default" one) and are the Linen initialisation's for that key:
    `vgg_flax.train.init.init_variables(linen, key, 32)`. The model keeps `rngs` (forked) for
    dropout. E.g. `create_model("A", width=0.125, head_width=32, rngs=nnx.Rngs(0))` is a narrow
    VGG-A.

    `pretrained` loads weights, as `vgg_flax.nnx.pretrained` does: True picks torchvision's
    ImageNet weights of `arch`; a name of `vgg_flax.list_pretrained()` or a hub repository
    ("timm/vgg16_bn.tv_in1k") is `vgg_flax.pretrained`'s; a path (a file or folder) is
    `vgg_flax.load`'s. The weights fix the architecture (`arch`, if given, and `batch_norm` are
    checked against them; width and head_width cannot be set) and `num_classes` defaults to
    theirs; another `num_classes` replaces fc8 by a fresh layer drawn from the "params" stream.
    For the weights' usage record as well, use `vgg_flax.nnx.pretrained` or `vgg_flax.nnx.load`.
    """
    if pretrained is not None and pretrained is not False:
        return create_pretrained(
            arch, pretrained, rngs=rngs, batch_norm=batch_norm, num_classes=num_classes, **options
        )
    num_classes = 1000 if num_classes is None else num_classes
    model = linen_vgg.create_model(
        "D" if arch is None else arch, batch_norm=batch_norm, num_classes=num_classes, **options
    )
    variables = init_variables(model, rngs.params(), arch_lib.MIN_CLASSIFY_SIZE)
    return VGG(model, variables, rngs=rngs)


def from_linen(
    model: linen_vgg.VGG, variables: Mapping[str, Any], *, rngs: nnx.Rngs | None = None
) -> VGG:
    """The NNX VGG of a Linen `(model, variables)`, sharing their arrays; `rngs` for dropout."""
    return VGG(model, variables, rngs=rngs)


def to_linen(model: VGG) -> tuple[linen_vgg.VGG, dict[str, Any]]:
    """The Linen `(model, variables)` of an NNX VGG: `model.apply(variables, images)` runs it.

    The variables hold the NNX model's current arrays (no copy): "params" and, with
    BatchNorm, "batch_stats", as `vgg_flax.save` and `vgg_flax.VGG.apply` take them.
    """
    variables = {}
    for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        tree = nnx.to_pure_dict(nnx.state(model, kind))
        if tree:
            variables[collection] = tree
    return model.linen, variables


def create_pretrained(
    arch: str | Sequence[int | str] | None,
    pretrained: Any,
    *,
    rngs: nnx.Rngs,
    batch_norm: bool = False,
    num_classes: int | None = None,
    **options: Any,
) -> VGG:
    """`vgg_flax.nnx.create_model(arch, pretrained=..., ...)`: the NNX VGG of those weights.

    True: torchvision's weights of `arch` (default "D"); a weights name or hub repository:
    `vgg_flax.pretrained`'s; a path: `vgg_flax.load`'s. A fresh fc8 (for another
    `num_classes`) is drawn from the "params" stream of `rngs`; the model keeps `rngs` for
    dropout. `arch` and `batch_norm` are checked against the weights.
    """
    from vgg_flax.weights import download
    from vgg_flax.weights.factory import weights_name

    if pretrained is True:
        if not isinstance(arch, str | None):
            raise ValueError(
                "pretrained=True picks torchvision's weights of a named architecture ('vgg16', "
                "'D'); a layer list has none: pass pretrained=NAME or a path, or no pretrained="
            )
        source = weights_name(arch or "D", batch_norm)
    elif isinstance(pretrained, str | os.PathLike):
        source = pretrained
    else:
        raise TypeError(
            "pretrained must be True, a weights name ('vgg16_bn'), a hub repository "
            f"('timm/vgg16_bn.tv_in1k') or a path, got {type(pretrained).__name__}"
        )
    key = rngs.params()
    if isinstance(source, os.PathLike) or os.path.exists(source):
        # vgg_flax.pretrained's rules for a file: its tensors fix the widths; a fresh fc8 for
        # another num_classes, drawn as vgg_flax.pretrained draws it.
        download.refuse_fixed_fields(options)
        head = options.pop("head", "auto")
        loaded = download.load_adapted(
            source, num_classes=num_classes, key=key, head=head, options=options
        )
    else:
        loaded = download.pretrained(
            source, num_classes=num_classes, key=key, batch_norm=batch_norm, **options
        )
    _check_fits(arch, batch_norm, loaded.model, pretrained)
    return VGG(loaded.model, loaded.variables, rngs=rngs)


def _check_fits(
    arch: str | Sequence[int | str] | None, batch_norm: bool, model: Any, pretrained: Any
) -> None:
    """Raise ValueError unless the loaded `model` is the architecture that was asked for."""
    same = arch is None or arch_lib.layer_list(arch) == arch_lib.layer_list(model.arch)
    if arch is not None:
        batch_norm = batch_norm or (isinstance(arch, str) and arch_lib.resolve(arch)[1])
        same = same and model.batch_norm == batch_norm
    elif batch_norm:  # no arch given: the weights fix it, and BatchNorm was asked for
        same = model.batch_norm
    if not same:
        label = arch_lib.arch_label(model.arch)
        names = [n for n, v in arch_lib.TORCHVISION_ARCHS.items() if v == (label, model.batch_norm)]
        fix = f"pass arch={names[0]!r}, or leave arch out" if names else "leave arch out"
        asked = "a BatchNorm net" if arch is None else f"{arch!r}, batch_norm={batch_norm}"
        raise ValueError(
            f"pretrained={pretrained!r} holds VGG {label} (batch_norm={model.batch_norm}), not "
            f"{asked}: {fix} (the weights fix the architecture)"
        )
