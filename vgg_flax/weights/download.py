"""Published weights (`vgg_flax.weights.registry`): download once, verify, convert; `pretrained`.

Files are cached in `VGG_FLAX_CACHE` (default `~/.cache/vgg_flax`); a copy already in torch's hub
cache is used in place. A download streams into a per-process `.part` file in the cache folder,
locked while it is written, and is renamed only once its size and SHA-256 match; it stops at the
expected size (or `UNKNOWN_SIZE_LIMIT`) and when the server stalls for `timeout` seconds. On any
error or SIGTERM the `.part` file is removed; one left by a killed process (SIGKILL) is unlocked,
never read, and removed by the next download into that folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import secrets
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from vgg_flax.cache_folder import cache_dir as cache_dir
from vgg_flax.models.vgg import VGG
from vgg_flax.weights import hub
from vgg_flax.weights import registry as weights
from vgg_flax.weights.fetching import DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S
from vgg_flax.weights.fetching import DownloadError, download_timeout
from vgg_flax.weights.loading import Loaded, load
from vgg_flax.weights.usage import Usage, with_classes

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")
_BLOCK = 1 << 20
# A partial download: .<file>.<pid>-<random>.part (the pid says who wrote it, for people).
_PARTIAL = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.part$")
_STALE_AFTER_S = 60.0  # an unlocked partial this old is stale even if its pid was reused

# The cap on a file whose size the registry does not know: every published VGG weight file is
# under 600 MB, so 1 GiB refuses an endless or wrong response long before the disk fills.
UNKNOWN_SIZE_LIMIT = 1 << 30
# Bytes allowed beyond a known size: the limit stops runaway responses, the hash decides what is
# right, and a re-saved copy on a mirror (its digest given by the caller) may differ by a few bytes.
SIZE_SLACK = 1 << 20
# Fields fixed by the weights' tensors: a pretrained model cannot change them.
_FIXED_BY_WEIGHTS = ("width", "head_width")


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
    size: int | None = None,
    timeout: float | None = None,
) -> str:
    """Path of the weight file `file`, downloaded from `base_url` into the cache if needed.

    `base_url` defaults to $VGG_FLAX_BASE_URL or torchvision's server. A copy in torch's hub
    cache is used when its hash matches; a download that fails or mismatches leaves nothing.
    `size` (bytes) defaults to the registry's (`weights.expected_size`); `timeout`: see
    `download`.
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
    return download(
        url,
        file,
        sha256=prefix,
        cache=cache,
        progress=progress,
        size=size if size is not None else weights.expected_size(file),
        timeout=timeout,
    )


def download(
    url: str,
    file: str,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    size: int | None = None,
    timeout: float | None = None,
) -> str:
    """Download `url` to `file` in the cache, kept only if its SHA-256 starts with `sha256`.

    `sha256` is the whole digest or a prefix of it; `md5` instead checks an MD5 (the digest
    keras.applications publishes). `size`: the file's length in bytes, when known; a response
    longer than `size + SIZE_SLACK` (without `size`: `UNKNOWN_SIZE_LIMIT`) is refused as it
    arrives. `timeout`: seconds to wait for the connection or the next bytes (default
    $VGG_FLAX_DOWNLOAD_TIMEOUT, else `DEFAULT_TIMEOUT_S`). A cached file that matches is used; a
    download that fails, stalls, mismatches or is interrupted (SIGTERM included) raises
    (`DownloadError`, or ValueError for a wrong digest) and leaves nothing in the cache.
    """
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    if not expected:
        raise ValueError(f"download of {file}: give the expected sha256 or md5 digest")
    folder = os.path.abspath(cache_dir(cache))
    target = os.path.join(folder, file)
    if os.path.isfile(target) and _sha256(target, algorithm).startswith(expected):
        return target
    os.makedirs(folder, exist_ok=True)
    remove_stale_partials(folder)
    limit = size + SIZE_SLACK if size is not None else UNKNOWN_SIZE_LIMIT
    timeout = download_timeout() if timeout is None else float(timeout)
    label = algorithm.upper().replace("SHA", "SHA-")
    by_hand = (
        f"To install it by hand, download {url} where the network allows it and copy it to "
        f"{target} (cache folder {folder}, set by $VGG_FLAX_CACHE); its {label} must start "
        f"with {expected[:16]}"
    )
    with _sigterm_raises(), _partial(folder, file) as (out, partial):
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            http_error = isinstance(error, urllib.error.HTTPError)  # its text has the status
            reason = error if http_error else getattr(error, "reason", None) or error
            raise DownloadError(f"cannot download {url}: {reason}. {by_hand}") from None
        with response:
            digest = _download(response, out, url, progress, algorithm, limit, by_hand)
        if not digest.startswith(expected):
            raise ValueError(
                f"{url} has {label} {digest[:16]}..., but {expected[:16]}... was expected: the "
                "download is corrupt or the server holds another file; nothing was cached"
            )
        out.flush()
        os.fsync(out.fileno())
        os.replace(partial, target)
    return target


def remove_stale_partials(folder: str | os.PathLike) -> list[str]:
    """Remove the partial downloads in `folder` that no live download holds; returns them.

    A download keeps its `.part` file locked; a process killed outright (SIGKILL) releases the
    lock, so an unlocked partial whose writer is gone (or that is older than a minute) is stale.
    """
    removed = []
    for name in os.listdir(folder):
        match = _PARTIAL.match(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                old = time.time() - os.fstat(handle.fileno()).st_mtime > _STALE_AFTER_S
                if old or not _alive(int(match.group(1))):
                    os.unlink(path)
                    removed.append(path)
        except (BlockingIOError, FileNotFoundError):
            continue  # a live download holds it, or another process removed it first
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _partial(folder: str, file: str) -> Iterator[tuple[Any, str]]:
    """A new locked `.part` file for `file` in `folder`, removed unless renamed away."""
    path = os.path.join(folder, f".{file}.{os.getpid()}-{secrets.token_hex(4)}.part")
    out = None
    # The file exists once open() has made it: a SIGTERM raised right after must still remove
    # it, so the cleanup goes by the (unique) path and open() runs inside the try.
    try:
        out = open(path, "xb")
        fcntl.flock(out, fcntl.LOCK_EX)
        yield out, path
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # renamed onto the target on success: nothing to remove
        finally:
            if out is not None:
                out.close()


class _Terminated(BaseException):
    """SIGTERM arrived during a download (BaseException: no `except Exception` swallows it)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """In the main thread, turn SIGTERM into an exception so `.part` cleanup runs, then re-send it.

    After the cleanup the previous handler is restored and the signal raised again, so the
    process ends (or handles SIGTERM) exactly as it would have without the download.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)
        raise DownloadError("download interrupted by SIGTERM; nothing was cached") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def pretrained(
    name: str = "vgg16",
    *,
    num_classes: int | None = None,
    key: Any = 0,
    batch_norm: bool = False,
    base_url: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    head: str = "auto",
    revision: str | None = None,
    **options: Any,
) -> Loaded:
    """`(model, variables, usage)` with published ImageNet weights, downloaded once and checked.

    `name` is a key of `vgg_flax.list_pretrained()` (torchvision's `weights.TORCHVISION_WEIGHTS`,
    e.g. "vgg16_bn"; "vgg16_features" is the features-only file, its head dropped with a
    warning; "vgg16_caffe" and "vgg19_caffe" (and their "_notop") are the authors' Caffe
    networks as keras.applications ships them) or an architecture ("A" .. "E", with
    `batch_norm`), which picks torchvision's weights of it. `usage` is the registry's record
    (preprocessing with its numbers, class names, source, accuracy).

    `name` may also be a Hugging Face hub repository ("timm/vgg16_bn.tv_in1k", or with the
    "hf-hub:" prefix), loaded through huggingface_hub's cache (`cache`: its folder) at `revision`
    (see `vgg_flax.weights.hub.fetch`); the record then comes from the repository's config.json.

    When `num_classes` differs from the weights' classes, fc8 is replaced by a fresh layer
    initialised as the model initialises fc8 (`weight_init`, `init_std`; zero bias) from `key`
    (a PRNG key or an int seed); fc6 and fc7 keep their weights, and the record loses the class
    names and accuracy. `options` are further `VGG` fields (dropout_rate, pooling, dtype,
    param_dtype, kernels, ...), except width and head_width, which the weights fix.
    """
    from vgg_flax.weights.factory import weights_name

    refuse_fixed_fields(options)  # before any download
    if hub.is_hub_name(name):
        name = hub.PREFIX + hub.repo_of(name)
        return load_adapted(
            name,
            num_classes=num_classes,
            key=key,
            head=head,
            revision=revision,
            cache=cache,
            options=options,
        )
    if revision is not None:
        raise ValueError(f"revision= is for hub weights ('timm/...'), not {name!r}")
    name = weights_name(name, batch_norm)
    entry = weights.KERAS_WEIGHTS.get(name) or weights.TORCHVISION_WEIGHTS[name]
    file = entry.source.file
    if name in weights.KERAS_WEIGHTS:  # the authors' networks, via keras.applications' files
        base = base_url or os.environ.get("VGG_FLAX_BASE_URL", entry.source.url.rsplit("/", 1)[0])
        url = base.rstrip("/") + "/" + file
        path = download(
            url, file, md5=entry.source.md5, cache=cache, progress=progress, size=entry.source.size
        )
    else:
        path = fetch(
            file, base_url=base_url, cache=cache, progress=progress, size=entry.source.size
        )
    return load_adapted(
        path,
        weights.torchvision_arch(entry),
        num_classes=num_classes,
        key=key,
        head=head,
        options=options,
    )


def refuse_fixed_fields(options: dict[str, Any]) -> None:
    """Raise ValueError if `options` set a field that pretrained weights' tensors fix."""
    fixed = [field for field in _FIXED_BY_WEIGHTS if field in options]
    if fixed:
        raise ValueError(
            f"{', '.join(fixed)} cannot be set with pretrained weights (their tensors fix them); "
            "drop the option, or build an untrained model (vgg_flax.create_model, or no "
            "pretrained=)"
        )


def load_adapted(
    source: str | os.PathLike,
    arch: Any = None,
    *,
    num_classes: int | None = None,
    key: Any = 0,
    head: str = "auto",
    options: dict[str, Any] | None = None,
    **load_options: Any,
) -> Loaded:
    """`vgg_flax.load(source, arch, head=head, **load_options)` as `pretrained` returns it:
    `options` (VGG fields, checked by `refuse_fixed_fields` first) applied, and fc8 replaced by
    a fresh layer drawn from `key` when `num_classes` differs from the weights' classes."""
    model, variables, usage = load(source, arch, head=head, **load_options)
    return _adapted(model, variables, usage, num_classes, key, dict(options or {}))


def _adapted(
    model: VGG,
    variables: dict[str, Any],
    usage: Usage,
    num_classes: int | None,
    key: Any,
    options: dict[str, Any],
) -> Loaded:
    """`pretrained`'s result: `options` applied, fc8 replaced for another `num_classes`."""
    num_classes = model.num_classes if num_classes is None else num_classes
    model = model.clone(num_classes=num_classes, **options)
    params = dict(variables["params"])
    if "fc8" in params and params["fc8"]["bias"].shape[0] != num_classes:
        params["fc8"] = _fresh_fc8(model, params["fc7"]["kernel"], key)
        usage = with_classes(usage, num_classes)
    variables = {**variables, "params": params}
    if "param_dtype" in options:
        variables = jax.tree.map(lambda x: jnp.asarray(x, options["param_dtype"]), variables)
    return Loaded(model, variables, usage)


def _fresh_fc8(model: VGG, fc7: Any, key: Any) -> dict[str, Any]:
    """A new fc8 for `model` after `fc7`'s kernel, drawn as the model initialises fc8."""
    from vgg_flax.models.initializers import kernel_init

    init = kernel_init(model.weight_init, head=True, std=model.init_std)
    key = jax.random.key(key) if isinstance(key, int) else key
    shape = (1, 1, fc7.shape[-1], model.num_classes)
    return {
        "kernel": init(key, shape, fc7.dtype),
        "bias": jnp.zeros((model.num_classes,), fc7.dtype),
    }


def _download(
    response: Any,
    out: Any,
    url: str,
    progress: bool,
    algorithm: str,
    limit: int,
    by_hand: str,
) -> str:
    """Stream `response` into `out` (at most `limit` bytes); returns the hex digest."""
    total = response.headers.get("Content-Length")
    announced = int(total) if total and total.isdigit() else None
    if announced is not None and announced > limit:
        raise DownloadError(
            f"{url} announces {announced} bytes, more than the {limit} allowed for this file "
            "(its known size, or UNKNOWN_SIZE_LIMIT); nothing was downloaded"
        )
    digest = hashlib.new(algorithm)
    received = 0
    with tqdm(
        total=announced,
        unit="B",
        unit_scale=True,
        desc=os.path.basename(url),
        disable=not progress,
    ) as bar:
        while True:
            try:
                block = response.read(min(_BLOCK, limit + 1 - received))
            except (OSError, http.client.HTTPException) as error:  # a stall or a cut connection
                reason = "timed out" if isinstance(error, TimeoutError) else error
                raise DownloadError(
                    f"download of {url} failed after {received} bytes: {reason}. {by_hand}"
                ) from None
            if not block:
                break
            received += len(block)
            if received > limit:
                raise DownloadError(
                    f"{url} sent more than the {limit} bytes allowed for this file (its known "
                    "size, or UNKNOWN_SIZE_LIMIT); nothing was cached"
                )
            out.write(block)
            digest.update(block)
            bar.update(len(block))
    if announced is not None and received != announced:
        raise DownloadError(f"download of {url} stopped after {received} of {announced} bytes")
    return digest.hexdigest()


def _sha256(path: str, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
