"""vgg-flax: the VGG networks of Simonyan & Zisserman (ICLR 2015) in JAX/Flax."""

from vgg_flax.configs import CONFIGS, TABLE2_MILLIONS, TORCHVISION_ARCHS, activation_names
from vgg_flax.model import VGG, create_model

__all__ = [
    "CONFIGS",
    "TABLE2_MILLIONS",
    "TORCHVISION_ARCHS",
    "VGG",
    "activation_names",
    "create_model",
]
