"""vgg-flax: the VGG networks of Simonyan & Zisserman (ICLR 2015) in JAX/Flax."""

from importlib.metadata import version as _version

from vgg_flax.arch import ARCHS, TABLE2_MILLIONS, TORCHVISION_ARCHS, activation_names
from vgg_flax.convert import from_torchvision, save_pth, to_torchvision
from vgg_flax.loader import load, save
from vgg_flax.model import VGG, architecture, create_model
from vgg_flax.pretrained import pretrained
from vgg_flax.pth import load_pth

__version__ = _version("vgg-flax")

__all__ = [
    "ARCHS",
    "TABLE2_MILLIONS",
    "TORCHVISION_ARCHS",
    "VGG",
    "__version__",
    "activation_names",
    "architecture",
    "create_model",
    "from_torchvision",
    "load",
    "load_pth",
    "pretrained",
    "save",
    "save_pth",
    "to_torchvision",
]
