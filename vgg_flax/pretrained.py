"""torchvision's ImageNet weights (`vgg_flax.weights`): download once, verify, convert.

Files are cached in `VGG_FLAX_CACHE` (default `~/.cache/vgg_flax`); a copy already in torch's hub
cache is used in place. A download goes to a temporary file in the cache folder and is renamed
only once its SHA-256 matches the prefix in its name, so the cache never holds a partial file.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from typing import Any

from tqdm import tqdm

from vgg_flax import weights
from vgg_flax.atomic import atomic_write
from vgg_flax.loader import load
from vgg_flax.model import VGG

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")
_BLOCK = 1 << 20


def cache_dir(override: str | os.PathLike | None = None) -> str:
    """The weights folder: `override`, else $VGG_FLAX_CACHE, else ~/.cache/vgg_flax."""
    if override is not None:
        return os.fspath(override)
    default = os.path.join(os.path.expanduser("~"), ".cache", "vgg_flax")
    return os.environ.get("VGG_FLAX_CACHE", default)


def torch_hub_dir() -> str:
    """torch's checkpoint cache, found as torch.hub does it but without importing torch."""
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    torch_home = os.environ.get("TORCH_HOME", os.path.join(xdg, "torch"))
    return os.path.join(torch_home, "hub", "checkpoints")


def fetch(
    file: str,
    *,
    base_url: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> str:
    """Path of the weight file `file`, downloaded from `base_url` into the cache if needed.

    `base_url` defaults to $VGG_FLAX_BASE_URL or torchvision's server. A copy in torch's hub
    cache is used when its hash matches; a download that fails or mismatches leaves nothing.
    """
    match = _HASH_IN_NAME.search(file)
    if match is None or os.path.basename(file) != file:
        raise ValueError(f"{file!r} is not a weight file name ending in -<sha256 prefix>.pth")
    prefix = match.group(1)
    folder = cache_dir(cache)
    for candidate in (os.path.join(folder, file), os.path.join(torch_hub_dir(), file)):
        if os.path.isfile(candidate) and _sha256(candidate).startswith(prefix):
            return candidate
    base_url = base_url or os.environ.get("VGG_FLAX_BASE_URL", weights.TORCHVISION_WEIGHTS_URL)
    url = base_url.rstrip("/") + "/" + file
    return download(url, file, sha256=prefix, cache=cache, progress=progress)


def download(
    url: str,
    file: str,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> str:
    """Download `url` to `file` in the cache, kept only if its SHA-256 starts with `sha256`.

    `sha256` is the whole digest or a prefix of it; `md5` instead checks an MD5 (the digest
    keras.applications publishes). A cached file that matches is used; a download that fails or
    mismatches leaves nothing.
    """
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    if not expected:
        raise ValueError(f"download of {file}: give the expected sha256 or md5 digest")
    folder = cache_dir(cache)
    target = os.path.join(folder, file)
    if os.path.isfile(target) and _sha256(target, algorithm).startswith(expected):
        return target
    os.makedirs(folder, exist_ok=True)
    # Raising inside the block leaves nothing in the cache: the file appears only when verified.
    with atomic_write(target) as out, urllib.request.urlopen(url) as response:
        digest = _download(response, out, file, progress, algorithm)
        if not digest.startswith(expected):
            raise ValueError(
                f"{url} has {algorithm.upper().replace('SHA', 'SHA-')} {digest[:16]}..., but "
                f"{expected[:16]}... was expected: the "
                "download is corrupt or the server holds another file; nothing was cached"
            )
    return target


def pretrained(
    name: str = "vgg16",
    *,
    base_url: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    head: str = "auto",
) -> tuple[VGG, dict[str, Any]]:
    """`(model, variables)` with torchvision's ImageNet weights for `name` (e.g. "vgg16_bn").

    `name` is a key of `weights.TORCHVISION_WEIGHTS`; "vgg16_features" is the features-only file
    (its head is dropped with a warning). Preprocessing: see `weights.TORCHVISION_WEIGHTS[name]`.
    "vgg16_caffe" and "vgg19_caffe" (and their "_notop") are the authors' Caffe networks as
    keras.applications ships them (`weights.KERAS_WEIGHTS`; preprocessing preset "caffe").
    """
    if name in weights.KERAS_WEIGHTS:  # the authors' networks, via keras.applications' files
        entry = weights.KERAS_WEIGHTS[name]
        base = base_url or os.environ.get("VGG_FLAX_BASE_URL", entry.url)
        url = base.rstrip("/") + "/" + entry.file
        path = download(url, entry.file, md5=entry.md5, cache=cache, progress=progress)
        return load(path, entry.arch, head=head)
    if name not in weights.TORCHVISION_WEIGHTS:
        known = ", ".join([*weights.TORCHVISION_WEIGHTS, *weights.KERAS_WEIGHTS])
        raise ValueError(
            f"no torchvision weights named {name!r} (nor Keras ones); choose one of {known}"
        )
    entry = weights.TORCHVISION_WEIGHTS[name]
    path = fetch(entry.file, base_url=base_url, cache=cache, progress=progress)
    return load(path, entry.arch, head=head)


def _download(
    response: Any, out: Any, label: str, progress: bool, algorithm: str = "sha256"
) -> str:
    total = response.headers.get("Content-Length")
    digest = hashlib.new(algorithm)
    received = 0
    with tqdm(
        total=int(total) if total else None,
        unit="B",
        unit_scale=True,
        desc=label,
        disable=not progress,
    ) as bar:
        while block := response.read(_BLOCK):
            out.write(block)
            digest.update(block)
            received += len(block)
            bar.update(len(block))
    if total is not None and received != int(total):
        raise ValueError(f"download of {label} stopped after {received} of {total} bytes")
    return digest.hexdigest()


def _sha256(path: str, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
