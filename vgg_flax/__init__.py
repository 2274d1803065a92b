"""vgg-flax: the VGG networks of Simonyan & Zisserman (ICLR 2015) in JAX/Flax."""

import importlib as _importlib
import sys as _sys
import types as _types
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

# Public name -> the module that defines it. Imported on first use (PEP 562), so that
# `import vgg_flax.cli` and `vgg-flax --help` do not pay for JAX, Flax and Orbax.
_EXPORTS = {
    "ARCHS": "vgg_flax.arch",
    "TABLE2_MILLIONS": "vgg_flax.arch",
    "TORCHVISION_ARCHS": "vgg_flax.arch",
    "activation_names": "vgg_flax.arch",
    "imagenet_classes": "vgg_flax.classes",
    "from_torchvision": "vgg_flax.convert",
    "save_pth": "vgg_flax.convert",
    "to_torchvision": "vgg_flax.convert",
    "from_caffe": "vgg_flax.formats.caffe",
    "from_keras": "vgg_flax.formats.keras",
    "load": "vgg_flax.loader",
    "save": "vgg_flax.loader",
    "PerceptualLoss": "vgg_flax.losses",
    "perceptual_loss": "vgg_flax.losses",
    "LPIPS": "vgg_flax.lpips",
    "load_lpips": "vgg_flax.lpips",
    "VGG": "vgg_flax.model",
    "architecture": "vgg_flax.model",
    "create_model": "vgg_flax.model",
    "feature_pyramid": "vgg_flax.pyramid",
    "list_models": "vgg_flax.factory",
    "list_pretrained": "vgg_flax.factory",
    "predict": "vgg_flax.predict",
    "pretrained": "vgg_flax.pretrained",
    "load_pth": "vgg_flax.pth",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from vgg_flax.arch import ARCHS, TABLE2_MILLIONS, TORCHVISION_ARCHS, activation_names
    from vgg_flax.classes import imagenet_classes
    from vgg_flax.convert import from_torchvision, save_pth, to_torchvision
    from vgg_flax.factory import list_models, list_pretrained
    from vgg_flax.formats.caffe import from_caffe
    from vgg_flax.formats.keras import from_keras
    from vgg_flax.loader import load, save
    from vgg_flax.losses import PerceptualLoss, perceptual_loss
    from vgg_flax.lpips import LPIPS, load_lpips
    from vgg_flax.model import VGG, architecture, create_model
    from vgg_flax.predict import predict
    from vgg_flax.pretrained import pretrained
    from vgg_flax.pth import load_pth
    from vgg_flax.pyramid import feature_pyramid


def __getattr__(name: str):
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vgg_flax' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _Package(_types.ModuleType):
    """Keeps `vgg_flax.pretrained` and `vgg_flax.predict` the functions, not their modules.

    Importing a submodule binds it as an attribute of its package; for the submodules named
    like the function they export, bind the function instead (as the eager imports did).
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, _types.ModuleType) and value.__name__ == _EXPORTS.get(name):
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


__version__ = _version("vgg-flax")

__all__ = [
    "ARCHS",
    "LPIPS",
    "TABLE2_MILLIONS",
    "TORCHVISION_ARCHS",
    "PerceptualLoss",
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
    "load_lpips",
    "load_pth",
    "perceptual_loss",
    "predict",
    "pretrained",
    "save",
    "save_pth",
    "to_torchvision",
]
