"""Model names and pretrained models as torchvision and timm users expect them.

`list_models()` names every architecture `create_model` builds; `list_pretrained()` names every
weight file `vgg_flax.pretrained` can fetch; `weights_name` finds the weights of an architecture.
`TIMM_HUB_WEIGHTS` names timm's hub repositories of torchvision's weights, which
`vgg_flax.pretrained` (and `vgg_flax.load("hf-hub:...")`) also take.
"""

from __future__ import annotations

from vgg_flax.models import arch as arch_lib
from vgg_flax.weights import registry as weights

# timm's copies of torchvision's ImageNet weights on the Hugging Face hub, in timm's layout.
TIMM_HUB_WEIGHTS = tuple(f"timm/{name}.tv_in1k" for name in arch_lib.TORCHVISION_ARCHS)


def list_models() -> list[str]:
    """Every architecture name `create_model` accepts: Table 1's letters and torchvision's names."""
    return [*arch_lib.ARCHS, *arch_lib.TORCHVISION_ARCHS]


def list_pretrained() -> list[str]:
    """Every weight name `vgg_flax.pretrained` accepts (it takes architecture names too)."""
    return [*weights.TORCHVISION_WEIGHTS, *weights.KERAS_WEIGHTS]


def pretrained_entry(name: str) -> weights.Usage:
    """The registry entry of the pretrained weights `name` (see `list_pretrained`)."""
    registry = {**weights.TORCHVISION_WEIGHTS, **weights.KERAS_WEIGHTS}
    if name not in registry:
        raise ValueError(
            f"no pretrained weights named {name!r}; choose one of {', '.join(list_pretrained())}"
        )
    return registry[name]


def weights_name(name: str, batch_norm: bool = False) -> str:
    """The registry name of the weights `name`: a registry name itself, or found for an arch.

    An architecture ("A" .. "E", a torchvision name) picks torchvision's ImageNet weights of it
    (BatchNorm from the name or `batch_norm`).
    """
    if name in list_pretrained() and not batch_norm:
        return name
    try:
        letter, named_bn = arch_lib.resolve(name)
    except ValueError:
        raise ValueError(
            f"no pretrained weights named {name!r}; choose one of {', '.join(list_pretrained())}, "
            "an architecture (A .. E) or a hub repository such as timm/vgg16_bn.tv_in1k"
        ) from None
    wanted = (letter, named_bn or batch_norm)
    for key, entry in weights.TORCHVISION_WEIGHTS.items():
        found = (entry.architecture["arch"], entry.architecture["batch_norm"])
        if found == wanted and not entry.features_only:
            return key
    raise ValueError(
        f"no pretrained ImageNet weights for VGG {letter}{' with BatchNorm' if wanted[1] else ''}; "
        f"pretrained weights exist for: {', '.join(list_pretrained())}"
    )
