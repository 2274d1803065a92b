"""Weights from the Hugging Face hub (e.g. timm's `timm/vgg16.tv_in1k`), through huggingface_hub.

`fetch("timm/vgg16.tv_in1k", revision=...)` returns the snapshot folder of the repository's
`config.json` and `model.safetensors` in huggingface_hub's cache, which `vgg_flax.load` reads
like any weights folder. The hub's own rules hold: files are cached once per commit, `revision`
(a branch, tag or commit hash) pins them, and with `HF_HUB_OFFLINE=1` only the cache is used.
vgg-flax adds: every file is checked against the hash the hub named it by (the SHA-256 of a
large file, the git blob hash of a small one), so a corrupt or tampered copy is refused, also
offline; a file over `MAX_FILE_BYTES` is refused before it is downloaded; and a server that
stalls is given up on after the download timeout (`vgg_flax.weights.fetching`). HF_ENDPOINT,
HF_HUB_CACHE and HF_HUB_OFFLINE are read at each call (huggingface_hub reads them at import).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from collections.abc import Iterator
from typing import Any

from vgg_flax.weights.fetching import DownloadError, download_timeout
from vgg_flax.weights.usage import Source

PREFIX = "hf-hub:"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Every VGG weight file is under 600 MB (as vgg_flax.weights.download.UNKNOWN_SIZE_LIMIT).
MAX_FILE_BYTES = 1 << 30
_REPO = re.compile(r"[\w.-]+/[\w.-]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class HubFiles:
    """A fetched repository: its snapshot `folder` (config.json, model.safetensors) and origin."""

    folder: str
    repo: str
    commit: str
    source: Source


def is_hub_name(name: Any) -> bool:
    """True for "hf-hub:OWNER/REPO" and for "OWNER/REPO" that is not a local path."""
    if not isinstance(name, str):
        return False
    if name.startswith(PREFIX):
        return True
    return bool(_REPO.fullmatch(name)) and not os.path.exists(name)


def repo_of(name: str) -> str:
    """The repository id of a hub name ("hf-hub:timm/vgg16.tv_in1k" -> "timm/vgg16.tv_in1k")."""
    repo = name.removeprefix(PREFIX)
    if not _REPO.fullmatch(repo):
        raise ValueError(f"{name!r} is not a hub repository: give OWNER/NAME (timm/vgg16.tv_in1k)")
    return repo


def fetch(
    name: str,
    *,
    revision: str | None = None,
    cache: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> HubFiles:
    """The checked config.json and model.safetensors of hub repository `name`, cached.

    `revision`: a branch, tag or commit hash (default "main"); `cache`: huggingface_hub's cache
    folder (default $HF_HUB_CACHE, else huggingface_hub's). `timeout`: seconds to wait to
    connect or for more bytes (default $VGG_FLAX_DOWNLOAD_TIMEOUT, else 30); huggingface_hub
    resumes a stalled body up to 5 times, so a download gives up within about 6 x (timeout + 1)
    s. Raises `DownloadError` (unreachable, stalled, too large; offline and not cached: naming
    the cache and how to fetch the files) or ValueError (no such repository, revision or file; a
    file whose hash does not match, which is removed from the cache).
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - an optional dependency
        raise ValueError("hub weights need huggingface_hub: pip install 'vgg-flax[hub]'") from None
    repo = repo_of(name)
    revision = revision or constants.DEFAULT_REVISION
    context = _Context(
        repo=repo,
        revision=revision,
        cache=os.fspath(cache or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE),
        endpoint=os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/"),
        timeout=download_timeout() if timeout is None else float(timeout),
        offline=constants.is_offline_mode() or _truthy(os.environ.get("HF_HUB_OFFLINE")),
    )
    config = _fetch_file(context, CONFIG_FILE)
    commit = os.path.basename(os.path.dirname(config))
    # The weights from the very commit the config came from, even if the branch moves meanwhile.
    weights = _fetch_file(dataclasses.replace(context, revision=commit), WEIGHTS_FILE)
    if os.path.dirname(weights) != os.path.dirname(config):
        raise DownloadError(f"{repo}: config.json and model.safetensors are from two snapshots")
    blob = os.path.realpath(weights)
    source = Source(
        file=WEIGHTS_FILE,
        url=f"{context.endpoint}/{repo}/resolve/{commit}/{WEIGHTS_FILE}",
        sha256=name if len(name := os.path.basename(blob)) == 64 else _blob_hash(blob),
        size=os.path.getsize(blob),
    )
    return HubFiles(os.path.dirname(config), repo, commit, source)


@dataclasses.dataclass(frozen=True)
class _Context:
    repo: str
    revision: str
    cache: str
    endpoint: str
    timeout: float
    offline: bool

    def how_to_fetch(self, file: str) -> str:
        return (
            f"Fetch it where the network allows with `hf download {self.repo} {CONFIG_FILE} "
            f"{WEIGHTS_FILE} --revision {self.revision} --cache-dir {self.cache}` (or "
            f"huggingface_hub.hf_hub_download), or copy that cache folder here; {file} of "
            f"{self.repo} goes to {self.cache}"
        )


def _fetch_file(context: _Context, file: str) -> str:
    """The checked local path of `file`: from the cache, else downloaded; see `fetch`."""
    import httpx2
    from huggingface_hub import errors, file_download

    cached = file_download.try_to_load_from_cache(
        context.repo, file, cache_dir=context.cache, revision=context.revision
    )
    pinned = bool(_COMMIT.fullmatch(context.revision))
    if isinstance(cached, str) and (pinned or context.offline):
        return _checked(cached, context)
    if context.offline:
        raise DownloadError(
            f"HF_HUB_OFFLINE is set and {file} of {context.repo} (revision {context.revision}) is "
            f"not in the Hugging Face cache {context.cache}. {context.how_to_fetch(file)}"
        )
    url = file_download.hf_hub_url(
        context.repo, file, revision=context.revision, endpoint=context.endpoint
    )
    try:
        # Asked first, with the timeout: huggingface_hub itself retries a silent server for a
        # minute before it looks at its cache.
        metadata = file_download.get_hf_file_metadata(url, timeout=context.timeout)
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as error:
        raise ValueError(
            f"the hub has no repository {context.repo} with revision {context.revision} "
            f"({type(error).__name__}); check the name (e.g. timm/vgg16.tv_in1k) and revision"
        ) from None
    except errors.RemoteEntryNotFoundError:
        raise ValueError(
            f"{context.repo} (revision {context.revision}) has no {file}: vgg-flax reads "
            f"repositories holding {CONFIG_FILE} and {WEIGHTS_FILE}, as timm's do"
        ) from None
    except (httpx2.TransportError, errors.HfHubHTTPError, errors.FileMetadataError) as error:
        if isinstance(cached, str):  # unreachable, but cached: as huggingface_hub does
            return _checked(cached, context)
        raise DownloadError(
            f"cannot reach {context.endpoint} for {file} of {context.repo} "
            f"({type(error).__name__}: {error or 'timed out'}; timeout {context.timeout:g} s) "
            f"and it is not in the cache {context.cache}. {context.how_to_fetch(file)}"
        ) from None
    if metadata.size is not None and metadata.size > MAX_FILE_BYTES:
        raise DownloadError(
            f"{url} announces {metadata.size} bytes, more than the {MAX_FILE_BYTES} allowed for "
            "a weight file (MAX_FILE_BYTES); nothing was downloaded"
        )
    try:
        with _body_timeout(context.timeout):
            path = file_download.hf_hub_download(
                context.repo,
                file,
                revision=context.revision,
                cache_dir=context.cache,
                endpoint=context.endpoint,
                etag_timeout=context.timeout,
            )
    except (httpx2.TransportError, errors.HfHubHTTPError, OSError) as error:
        raise DownloadError(
            f"download of {url} failed ({type(error).__name__}: {error or 'timed out'}); nothing "
            f"was cached. {context.how_to_fetch(file)}"
        ) from None
    return _checked(path, context)


@contextlib.contextmanager
def _body_timeout(seconds: float) -> Iterator[None]:
    """huggingface_hub's read timeout for file bodies set to `seconds` (it has no argument)."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_DOWNLOAD_TIMEOUT
    constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds  # type: ignore[assignment]
    try:
        yield
    finally:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = previous


def _checked(path: str, context: _Context) -> str:
    """`path` if its content has the hash its cache blob is named by; else removed, ValueError."""
    blob = os.path.realpath(path)
    if os.path.basename(os.path.dirname(blob)) != "blobs":
        return path  # a copy (no symlinks on this file system): huggingface_hub checked its size
    expected = os.path.basename(blob)
    if len(expected) not in (40, 64):
        return path
    found = _blob_hash(blob)
    if found != expected:
        for stale in (path, blob):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        raise ValueError(
            f"{os.path.basename(path)} of {context.repo} in the cache {context.cache} is corrupt: "
            f"its hash is {found[:16]}..., the hub's is {expected[:16]}...; it was removed, so "
            "the next call downloads it again"
        )
    return path


def _blob_hash(path: str) -> str:
    """The hash the hub names a blob by: SHA-256 (64 hex: LFS files) or git's blob SHA-1 (40)."""
    expected = os.path.basename(path)
    if len(expected) == 40:
        digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode(), usedforsecurity=False)
    else:
        digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")
