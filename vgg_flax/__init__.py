"""vgg-flax: the VGG networks of Simonyan & Zisserman (ICLR 2015) in JAX/Flax."""

from vgg_flax.checkpoint import load
from vgg_flax.configs import CONFIGS, TABLE2_MILLIONS, TORCHVISION_ARCHS, activation_names
from vgg_flax.convert import from_torchvision, save_pth, to_torchvision
from vgg_flax.model import VGG, create_model
from vgg_flax.pretrained import pretrained
from vgg_flax.pth import load_pth

__all__ = [
    "CONFIGS",
    "TABLE2_MILLIONS",
    "TORCHVISION_ARCHS",
    "VGG",
    "activation_names",
    "create_model",
    "from_torchvision",
    "load",
    "load_pth",
    "pretrained",
    "save_pth",
    "to_torchvision",
]
