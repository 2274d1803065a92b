"""Fail fast when a TFDS dataset must be downloaded and its host cannot be reached (offline).

TFDS retries an unreachable host for minutes, printing urllib3 warnings. Before preparing,
`check_reachable` connects once to each host the dataset downloads from (a few seconds at most)
and, when one cannot be reached, raises one ValueError naming the URL and how to proceed
offline: fetch the files elsewhere and place them in the manual folder, where TFDS looks first.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

TIMEOUT_S = 5.0


class _Recorded(Exception):
    """Raised by `_Recorder` once the builder has asked for its downloads."""


class _Recorder:
    """Stands in for TFDS's download manager: records the URLs asked for, then stops."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def download(self, urls: Any, *args: Any, **kwargs: Any) -> None:
        values = list(urls.values()) if isinstance(urls, Mapping) else urls
        self.urls += [str(u) for u in (values if isinstance(values, list | tuple) else [values])]
        raise _Recorded

    download_and_extract = download


def expected_downloads(builder: Any) -> dict[str, str]:
    """url -> file name of what a TFDS builder's config downloads.

    The builder's split generator is run against a recorder that stops at its first download
    request; builders it cannot run that way give every URL of their registered checksums.
    """
    infos = getattr(builder, "url_infos", None) or {}
    recorder = _Recorder()
    try:
        builder._split_generators(recorder)
    except _Recorded:
        urls = recorder.urls
    except Exception:  # a builder that needs more of the manager (manual_dir, ...)
        urls = list(infos)
    else:
        urls = list(infos)
    return {url: getattr(infos.get(url), "filename", None) or os.path.basename(url) for url in urls}


def host_error(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """Why `url`'s host cannot be reached within `timeout` seconds (None: it can be).

    Behind a proxy (HTTPS_PROXY, ...), as requests would use it, the proxy is what must answer.
    """
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    # The resolver has no timeout of its own, so the connection attempt runs in a thread.
    future = pool.submit(socket.create_connection, (parts.hostname, port), timeout)
    try:
        future.result(timeout=timeout).close()
        return None
    except concurrent.futures.TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as error:
        return error.strerror or str(error)
    finally:
        pool.shutdown(wait=False)


def check_reachable(
    name: str,
    downloads: Mapping[str, str],
    manual_dir: str | None = None,
    timeout: float = TIMEOUT_S,
) -> None:
    """Raise ValueError (one line) when a host of `downloads` (url -> file name) is unreachable.

    Nothing is checked when one of the files already lies in `manual_dir` (TFDS uses it).
    """
    if manual_dir and any(os.path.isfile(os.path.join(manual_dir, f)) for f in downloads.values()):
        return
    checked: set[tuple[str | None, int | None]] = set()
    for url, filename in downloads.items():
        parts = urllib.parse.urlsplit(url)
        if (parts.hostname, parts.port) in checked:
            continue
        checked.add((parts.hostname, parts.port))
        problem = host_error(url, timeout)
        if problem is not None:
            folder = manual_dir or "a folder"
            raise ValueError(
                f"cannot download {name}: {parts.netloc} is unreachable ({problem}) for {url}; "
                f"offline, fetch {filename} on a connected machine, place it in {folder} and "
                "pass that folder as --manual-dir"
            )
