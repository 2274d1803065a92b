"""The VGG networks as Flax NNX modules, over the Linen implementation (`flax.nnx.bridge`).

`model` (the NNX `VGG`, `create_model`, `from_linen`, `to_linen`), `loading` (pretrained and
saved weights in NNX: `load`, `pretrained`, `from_loaded`), `parallel` (`replicate`: state over
the data-parallel mesh). See docs/nnx.md.
"""

from vgg_flax.nnx.loading import Loaded, from_loaded, load, pretrained
from vgg_flax.nnx.model import (
    VGG,
    check_variables,
    create_model,
    from_linen,
    to_linen,
    variable_shapes,
)
from vgg_flax.nnx.parallel import replicate

__all__ = [
    "VGG",
    "Loaded",
    "check_variables",
    "create_model",
    "from_linen",
    "from_loaded",
    "load",
    "pretrained",
    "replicate",
    "to_linen",
    "variable_shapes",
]
