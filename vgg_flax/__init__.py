"""vgg-flax: the VGG networks of Simonyan & Zisserman (ICLR 2015) in JAX/Flax."""

from importlib.metadata import version as _version

from vgg_flax.arch import ARCHS, TABLE2_MILLIONS, TORCHVISION_ARCHS, activation_names
from vgg_flax.convert import from_torchvision, save_pth, to_torchvision
from vgg_flax.formats.caffe import from_caffe
from vgg_flax.formats.keras import from_keras
from vgg_flax.loader import load, save
from vgg_flax.losses import PerceptualLoss, perceptual_loss
from vgg_flax.lpips import LPIPS, load_lpips
from vgg_flax.model import VGG, architecture, create_model
from vgg_flax.pretrained import pretrained
from vgg_flax.pth import load_pth

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
    "from_caffe",
    "from_keras",
    "from_torchvision",
    "load",
    "load_lpips",
    "load_pth",
    "perceptual_loss",
    "pretrained",
    "save",
    "save_pth",
    "to_torchvision",
]
