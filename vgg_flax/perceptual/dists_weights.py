"""DISTS's learned alpha and beta: found, verified and read strictly, without torch.

The file (`weights.pt`, two tensors `alpha` and `beta` of shape (1, 1475, 1, 1): one weight per
channel of the image and of relu1_2 ... relu5_3) is looked for where the `torchmetrics` and
`dists-pytorch` wheels install it, then in vgg-flax's weights cache, found without importing
either package, and used only if its SHA-256 is the published one
(`vgg_flax.weights.registry.DISTS_WEIGHTS_SHA256`); the search and its error are LPIPS's heads'
(`vgg_flax.perceptual.lpips_heads.find_verified`). `download_weights` fetches a missing file once
from the authors' repository into the cache.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import numpy as np

from vgg_flax.formats.pth import load_pth
from vgg_flax.perceptual import lpips_heads
from vgg_flax.perceptual.lpips_heads import HEAD_CHANNELS, HeadFileError
from vgg_flax.weights import registry as weights
from vgg_flax.weights.download import cache_dir, download

# The image's 3 channels, then relu1_2 ... relu5_3's: alpha and beta hold one weight per channel.
STAGE_CHANNELS = (3, *HEAD_CHANNELS)
CACHED_NAME = f"dists_alpha_beta-{weights.DISTS_WEIGHTS_SHA256[:8]}.pt"


def candidates(cache: str | os.PathLike | None = None) -> list[str]:
    """Every local place the alpha/beta file is looked for, in order."""
    places = []
    torchmetrics_dir = lpips_heads.package_dir("torchmetrics")
    if torchmetrics_dir:
        places.append(
            os.path.join(torchmetrics_dir, "functional", "image", "dists_models", "weights.pt")
        )
    dists_dir = lpips_heads.package_dir("DISTS_pytorch")
    if dists_dir:
        places.append(os.path.join(dists_dir, "weights.pt"))
    # dists-pytorch's wheel also installs the file at the environment's root (where it reads it).
    places.append(os.path.join(sys.prefix, "weights.pt"))
    places.append(os.path.join(cache_dir(cache), CACHED_NAME))
    return places


def find_weights(cache: str | os.PathLike | None = None) -> str:
    """Path of a verified local DISTS alpha/beta file; an error says where it looked."""
    return lpips_heads.find_verified(
        "DISTS alpha/beta file",
        candidates(cache),
        weights.DISTS_WEIGHTS_SHA256,
        "Install `torchmetrics` or `dists-pytorch`, or download it once with "
        f"vgg_flax.perceptual.dists_weights.download_weights() from {weights.DISTS_WEIGHTS_URL}",
    )


def download_weights(
    *, url: str | None = None, cache: str | os.PathLike | None = None, progress: bool = True
) -> str:
    """Download the alpha/beta file into the weights cache, SHA-256 checked; its path.

    `url` replaces the authors' `vgg_flax.weights.registry.DISTS_WEIGHTS_URL`.
    """
    return download(
        url or weights.DISTS_WEIGHTS_URL,
        CACHED_NAME,
        sha256=weights.DISTS_WEIGHTS_SHA256,
        size=weights.DISTS_WEIGHTS_SIZE,
        cache=cache,
        progress=progress,
    )


def read_weights(
    source: str | os.PathLike | Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """`(alpha, beta)`, float32 vectors of 1475 channels, from the file or a state dict.

    Strict: both must be present with shape (1, 1475, 1, 1), and no other key; else a
    `HeadFileError` naming the key.
    """
    name = os.fspath(source) if isinstance(source, str | os.PathLike) else "the state dict"
    state = load_pth(source) if isinstance(source, str | os.PathLike) else dict(source)
    total = sum(STAGE_CHANNELS)
    found = []
    for key in ("alpha", "beta"):
        if key not in state:
            raise HeadFileError(f"{name}: {key} is missing; a DISTS file holds alpha and beta")
        value = np.asarray(state[key])
        if value.shape != (1, total, 1, 1):
            raise HeadFileError(
                f"{name}: {key} has shape {value.shape}, expected (1, {total}, 1, 1) (the image's "
                "3 channels and VGG-16's relu1_2 ... relu5_3)"
            )
        found.append(value.reshape(total).astype(np.float32))
    unknown = sorted(set(state) - {"alpha", "beta"})
    if unknown:
        raise HeadFileError(f"{name}: unexpected keys {unknown}; expected alpha and beta only")
    return found[0], found[1]


def load_weights(
    source: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    *,
    cache: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """DISTS's `(alpha, beta)`: from `source` if given, else from `find_weights`."""
    return read_weights(find_weights(cache) if source is None else source)
