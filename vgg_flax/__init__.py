"""vgg-flax: the VGG networks of Simonyan & Zisserman (ICLR 2015) in JAX/Flax."""

import importlib as _importlib
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

# Public name -> the module that defines it. Imported on first use (PEP 562), so that
# `import vgg_flax.cli` and `vgg-flax --help` do not pay for JAX, Flax and Orbax.
_EXPORTS = {
    "ARCHS": "vgg_flax.models.arch",
    "TABLE2_MILLIONS": "vgg_flax.models.arch",
    "TORCHVISION_ARCHS": "vgg_flax.models.arch",
    "activation_names": "vgg_flax.models.arch",
    "imagenet_classes": "vgg_flax.classes",
    "from_torchvision": "vgg_flax.formats.torchvision",
    "save_pth": "vgg_flax.formats.torchvision",
    "to_torchvision": "vgg_flax.formats.torchvision",
    "from_caffe": "vgg_flax.formats.caffe",
    "from_keras": "vgg_flax.formats.keras",
    "Loaded": "vgg_flax.weights.loading",
    "Usage": "vgg_flax.weights.usage",
    "load": "vgg_flax.weights.loading",
    "save": "vgg_flax.weights.loading",
    "PerceptualLoss": "vgg_flax.perceptual.losses",
    "perceptual_loss": "vgg_flax.perceptual.losses",
    "LPIPS": "vgg_flax.perceptual.lpips",
    "load_lpips": "vgg_flax.perceptual.lpips",
    "DISTS": "vgg_flax.perceptual.dists",
    "load_dists": "vgg_flax.perceptual.dists",
    "normalise_activations": "vgg_flax.perceptual.normalise",
    "VGG": "vgg_flax.models.vgg",
    "architecture": "vgg_flax.models.vgg",
    "create_model": "vgg_flax.models.vgg",
    "feature_pyramid": "vgg_flax.models.features",
    "list_models": "vgg_flax.weights.factory",
    "list_pretrained": "vgg_flax.weights.factory",
    "predict": "vgg_flax.inference.prediction",
    "pretrained": "vgg_flax.weights.download",
    "load_pth": "vgg_flax.formats.pth",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from vgg_flax.classes import imagenet_classes
    from vgg_flax.formats.caffe import from_caffe
    from vgg_flax.formats.keras import from_keras
    from vgg_flax.formats.pth import load_pth
    from vgg_flax.formats.torchvision import from_torchvision, save_pth, to_torchvision
    from vgg_flax.inference.prediction import predict
    from vgg_flax.models.arch import ARCHS, TABLE2_MILLIONS, TORCHVISION_ARCHS, activation_names
    from vgg_flax.models.features import feature_pyramid
    from vgg_flax.models.vgg import VGG, architecture, create_model
    from vgg_flax.perceptual.dists import DISTS, load_dists
    from vgg_flax.perceptual.losses import PerceptualLoss, perceptual_loss
    from vgg_flax.perceptual.lpips import LPIPS, load_lpips
    from vgg_flax.perceptual.normalise import normalise_activations
    from vgg_flax.weights.download import pretrained
    from vgg_flax.weights.factory import list_models, list_pretrained
    from vgg_flax.weights.loading import Loaded, load, save
    from vgg_flax.weights.usage import Usage


def __getattr__(name: str):
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vgg_flax' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = _version("vgg-flax")

__all__ = [
    "ARCHS",
    "DISTS",
    "LPIPS",
    "Loaded",
    "TABLE2_MILLIONS",
    "TORCHVISION_ARCHS",
    "PerceptualLoss",
    "Usage",
    "VGG",
    "__version__",
    "activation_names",
    "architecture",
    "create_model",
    "feature_pyramid",
    "from_caffe",
    "from_keras",
    "from_torchvision",
    "imagenet_classes",
    "list_models",
    "list_pretrained",
    "load",
    "load_dists",
    "load_lpips",
    "load_pth",
    "normalise_activations",
    "perceptual_loss",
    "predict",
    "pretrained",
    "save",
    "save_pth",
    "to_torchvision",
]
