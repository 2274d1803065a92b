"""The user's vgg_flax cache folder: weights, perceptual heads and rendered datasets live there.

A leaf module (it imports nothing of vgg_flax), so the data layer and the weights layer can both
find the folder without importing each other.
"""

from __future__ import annotations

import os


def cache_dir(override: str | os.PathLike | None = None) -> str:
    """The cache folder: `override`, else $VGG_FLAX_CACHE, else ~/.cache/vgg_flax."""
    if override is not None:
        return os.fspath(override)
    default = os.path.join(os.path.expanduser("~"), ".cache", "vgg_flax")
    return os.environ.get("VGG_FLAX_CACHE", default)
