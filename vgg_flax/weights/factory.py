"""Model names and pretrained models as torchvision and timm users expect them.

`list_models()` names every architecture `create_model` builds; `list_pretrained()` names every
weight file `vgg_flax.pretrained` can fetch. `pretrained_model` is `create_model(...,
pretrained=...)`: a registry's weights for an architecture, with a fresh classifier (fc8) when
the number of classes differs from the weights'.
"""

from __future__ import annotations

from typing import Any

from vgg_flax.models import arch as arch_lib
from vgg_flax.weights import registry as weights

# Fields fixed by the weights' tensors: a pretrained model cannot change them.
_FIXED_BY_WEIGHTS = ("width", "head_width")


def list_models() -> list[str]:
    """Every architecture name `create_model` accepts: Table 1's letters and torchvision's names."""
    return [*arch_lib.ARCHS, *arch_lib.TORCHVISION_ARCHS]


def list_pretrained() -> list[str]:
    """Every weight name `vgg_flax.pretrained` and `create_model(pretrained=...)` accept."""
    return [*weights.TORCHVISION_WEIGHTS, *weights.KERAS_WEIGHTS]


def pretrained_entry(name: str) -> weights.Weights:
    """The registry entry of the pretrained weights `name` (see `list_pretrained`)."""
    registry = {**weights.TORCHVISION_WEIGHTS, **weights.KERAS_WEIGHTS}
    if name not in registry:
        raise ValueError(
            f"no pretrained weights named {name!r}; choose one of {', '.join(list_pretrained())}"
        )
    return registry[name]


def weights_name(arch: str, pretrained: bool | str, batch_norm: bool = False) -> str:
    """The registry name of the weights for `arch`: `pretrained` itself, or found for True.

    A name given is checked against `arch` (e.g. "D" or "vgg16" with "vgg16_caffe"); True picks
    torchvision's ImageNet weights of that architecture (BatchNorm from the name or batch_norm).
    """
    letter, named_bn = arch_lib.resolve(arch)
    wanted = (letter, named_bn or batch_norm)
    if isinstance(pretrained, str):
        entry = pretrained_entry(pretrained)
        have = arch_lib.TORCHVISION_ARCHS[entry.arch]
        if have != wanted:
            raise ValueError(
                f"weights {pretrained!r} are VGG {have[0]}{' with BatchNorm' if have[1] else ''}, "
                f"not the requested {arch!r}{' with BatchNorm' if batch_norm else ''}; ask for "
                f"create_model({entry.arch!r}, pretrained={pretrained!r})"
            )
        return pretrained
    for name, entry in weights.TORCHVISION_WEIGHTS.items():
        if arch_lib.TORCHVISION_ARCHS[entry.arch] == wanted and not entry.features_only:
            return name
    raise ValueError(
        f"no pretrained ImageNet weights for VGG {letter}{' with BatchNorm' if wanted[1] else ''}; "
        f"pretrained weights exist for: {', '.join(list_pretrained())}"
    )


def pretrained_model(
    arch: str,
    pretrained: bool | str = True,
    *,
    batch_norm: bool = False,
    num_classes: int = 1000,
    key: Any = 0,
    **options: Any,
) -> tuple[Any, dict[str, Any]]:
    """`(model, variables)`: pretrained weights for `arch`, with `num_classes` outputs.

    When `num_classes` differs from the weights' classes, fc8 is replaced by a fresh layer
    initialised as the model initialises fc8 (`weight_init`, `init_std`; zero bias) from `key`
    (a PRNG key or an int seed); fc6 and fc7 keep their weights. `options` are further `VGG`
    fields (dropout_rate, pooling, dtype, param_dtype, kernels, ...), except width and head_width,
    which the weights fix. Weights without a classifier (features-only files) come without one.
    """
    import jax
    import jax.numpy as jnp

    from vgg_flax.models.initializers import kernel_init
    from vgg_flax.weights.download import pretrained as fetch_pretrained

    fixed = [field for field in _FIXED_BY_WEIGHTS if field in options]
    if fixed:
        raise ValueError(
            f"{', '.join(fixed)} cannot be set with pretrained weights (their tensors fix them); "
            "drop the option, or build an untrained model with pretrained=False"
        )
    model, variables = fetch_pretrained(weights_name(arch, pretrained, batch_norm))
    model = model.clone(num_classes=num_classes, **options)
    params = dict(variables["params"])
    if "fc8" in params and params["fc8"]["bias"].shape[0] != num_classes:
        fc7 = params["fc7"]["kernel"]
        init = kernel_init(model.weight_init, head=True, std=model.init_std)
        key = jax.random.key(key) if isinstance(key, int) else key
        shape = (1, 1, fc7.shape[-1], num_classes)
        params["fc8"] = {
            "kernel": init(key, shape, fc7.dtype),
            "bias": jnp.zeros((num_classes,), fc7.dtype),
        }
    variables = {**variables, "params": params}
    if "param_dtype" in options:
        variables = jax.tree.map(lambda x: jnp.asarray(x, options["param_dtype"]), variables)
    return model, variables
