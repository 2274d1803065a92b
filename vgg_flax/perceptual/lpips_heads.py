"""LPIPS's linear heads for the VGG trunk: found, verified and read strictly, without torch.

The heads are the 1x1 convolutions `lin0` ... `lin4` (one output, no bias) of the `lpips`
package. Their files are looked for in the `lpips` package, in `torchmetrics` (v0.1 only) and in
vgg-flax's weights cache, found through importlib without importing either package; a file is
used only if its SHA-256 is the published one (`vgg_flax.weights.registry.LPIPS_VGG_HEADS`).
`download_heads` fetches a missing file once from the authors' repository into the cache.
Unlike the original (`load_state_dict(..., strict=False)`), a file with a missing or misshaped
layer is an error naming it, never a silently random head.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

import numpy as np

from vgg_flax.formats.pth import load_pth
from vgg_flax.weights import registry as weights
from vgg_flax.weights.download import _sha256, cache_dir, download

# Channels of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the inputs of lin0 ... lin4.
HEAD_CHANNELS = (64, 128, 256, 512, 512)
# Keys a whole saved LPIPS module also holds (its trunk, scaling buffers, the ModuleList alias).
_IGNORED_PREFIXES = ("net.", "scaling_layer.", "lins.")


class HeadFileError(ValueError):
    """An LPIPS head file (or DISTS alpha/beta file) with a missing, misshaped or unknown entry."""


def versions() -> tuple[str, ...]:
    """The LPIPS versions whose VGG heads are known ("0.1", "0.0")."""
    return tuple(weights.LPIPS_VGG_HEADS)


def _check_version(version: str) -> str:
    version = version.removeprefix("v")
    if version not in weights.LPIPS_VGG_HEADS:
        known = ", ".join(versions())
        raise ValueError(f"unknown LPIPS version {version!r}; choose one of {known}")
    return version


def head_url(version: str = "0.1", base_url: str | None = None) -> str:
    """The authors' URL of the VGG head file for `version` (or under `base_url`)."""
    version = _check_version(version)
    base = base_url or weights.LPIPS_WEIGHTS_URL
    return f"{base.rstrip('/')}/v{version}/vgg.pth"


def cached_name(version: str = "0.1") -> str:
    """The head file's name in the weights cache: lpips_vgg_v{version}-{sha256 prefix}.pth."""
    version = _check_version(version)
    return f"lpips_vgg_v{version}-{weights.LPIPS_VGG_HEADS[version][:8]}.pth"


def package_dir(name: str) -> str | None:
    """The folder of the installed top-level package `name`, without importing it (or None)."""
    # find_spec of a top-level package reads its location without running its __init__.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def candidates(version: str = "0.1", cache: str | os.PathLike | None = None) -> list[str]:
    """Every local place a head file for `version` is looked for, in order."""
    version = _check_version(version)
    places = []
    lpips_dir = package_dir("lpips")
    if lpips_dir:
        places.append(os.path.join(lpips_dir, "weights", f"v{version}", "vgg.pth"))
    torchmetrics_dir = package_dir("torchmetrics")
    if torchmetrics_dir and version == "0.1":
        places.append(
            os.path.join(torchmetrics_dir, "functional", "image", "lpips_models", "vgg.pth")
        )
    places.append(os.path.join(cache_dir(cache), cached_name(version)))
    return places


def find_heads(version: str = "0.1", cache: str | os.PathLike | None = None) -> str:
    """Path of a verified local VGG head file for `version`; an error says where it looked."""
    version = _check_version(version)
    return find_verified(
        f"LPIPS v{version} VGG head file",
        candidates(version, cache),
        weights.LPIPS_VGG_HEADS[version],
        f"Install the `lpips` package, or download it once with vgg_flax.perceptual.lpips_heads."
        f"download_heads({version!r}) from {head_url(version)}",
    )


def find_verified(what: str, places: list[str], sha256: str, fix: str) -> str:
    """The first of `places` that is a file with SHA-256 `sha256`; else an error listing them.

    `what` names the file in the error, `fix` ends it (how to get the file). Shared by every
    small published file a perceptual metric reads (LPIPS's heads, DISTS's alpha and beta).
    """
    looked = []
    for path in places:
        if not os.path.isfile(path):
            looked.append(f"{path} (absent)")
        elif _sha256(path) != sha256:
            looked.append(f"{path} (SHA-256 differs from the published file)")
        else:
            return path
    raise FileNotFoundError(f"no {what} found; looked in: {'; '.join(looked)}. {fix}")


def download_heads(
    version: str = "0.1",
    *,
    base_url: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> str:
    """Download the VGG head file for `version` into the weights cache, SHA-256 checked.

    `base_url` replaces the authors' `vgg_flax.weights.registry.LPIPS_WEIGHTS_URL` (the file is
    fetched
    from `{base_url}/v{version}/vgg.pth`). Returns the cached path.
    """
    version = _check_version(version)
    return download(
        head_url(version, base_url),
        cached_name(version),
        sha256=weights.LPIPS_VGG_HEADS[version],
        size=weights.LPIPS_VGG_HEAD_SIZES[version],
        cache=cache,
        progress=progress,
    )


def read_heads(source: str | os.PathLike | Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The five head weight vectors (float32, channels each) from a head file or state dict.

    Strict: every `lin{i}.model.1.weight` (or `.model.0.` for heads saved without dropout) must
    be present with shape (1, C_i, 1, 1); other keys are refused unless they belong to a whole
    saved LPIPS module (its `net.`, `scaling_layer.` and `lins.` entries).
    """
    name = os.fspath(source) if isinstance(source, str | os.PathLike) else "the state dict"
    state = load_pth(source) if isinstance(source, str | os.PathLike) else dict(source)
    heads, used = [], set()
    for index, channels in enumerate(HEAD_CHANNELS):
        keys = [f"lin{index}.model.1.weight", f"lin{index}.model.0.weight"]
        present = [key for key in keys if key in state]
        if len(present) != 1:
            problem = "is missing" if not present else "appears twice (with and without dropout)"
            raise HeadFileError(
                f"{name}: layer {keys[0]} {problem}; an LPIPS VGG head file holds lin0 ... lin4 "
                "with shapes (1, 64|128|256|512|512, 1, 1)"
            )
        value = np.asarray(state[present[0]])
        if value.shape != (1, channels, 1, 1):
            raise HeadFileError(
                f"{name}: layer {present[0]} has shape {value.shape}, expected "
                f"(1, {channels}, 1, 1): this is not a VGG LPIPS head (AlexNet or SqueezeNet?)"
            )
        used.add(present[0])
        heads.append(value.reshape(channels).astype(np.float32))
    unknown = [k for k in state if k not in used and not k.startswith(_IGNORED_PREFIXES)]
    if unknown:
        raise HeadFileError(f"{name}: unexpected layers {unknown}; expected lin0 ... lin4 only")
    return tuple(heads)


def load_heads(
    version: str = "0.1",
    source: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    *,
    cache: str | os.PathLike | None = None,
) -> tuple[np.ndarray, ...]:
    """The VGG heads of LPIPS `version`: from `source` if given, else from `find_heads`."""
    return read_heads(find_heads(version, cache) if source is None else source)
