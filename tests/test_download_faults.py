"""Downloads under faults: stalling, endless or unreachable servers on 127.0.0.1, and a fetch
ended by SIGTERM or SIGKILL. Each must fail fast with a clear error and leave nothing partial
in the cache that could ever be taken for the file."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vgg_flax.weights import registry as weights
from vgg_flax.weights.download import DownloadError, fetch, remove_stale_partials

# The module (the package's attribute `vgg_flax.pretrained` is the function of that name).
downloads = importlib.import_module("vgg_flax.weights.download")

ROOT = Path(__file__).resolve().parent.parent
NAME = "weights-0123abcd.pth"  # the hash never matters: no test gets that far


@contextlib.contextmanager
def raw_server(respond):
    """A TCP server on 127.0.0.1 that runs `respond(connection, stop)` for each client."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    threads = []

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=_run, args=(respond, connection, stop), daemon=True)
            thread.start()
            threads.append(thread)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/models"
    finally:
        stop.set()
        server.join()
        listener.close()
        for thread in threads:
            thread.join(timeout=5)


def _run(respond, connection, stop):
    with connection, contextlib.suppress(OSError):
        connection.recv(65536)  # the request
        respond(connection, stop)


def silent(connection, stop):
    """Read the request, then never answer."""
    stop.wait()


def headers_then_stall(connection, stop):
    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
    stop.wait()


def endless(connection, stop):
    """No Content-Length, and data until the client hangs up."""
    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    block = b"\0" * 65536
    while not stop.is_set():
        connection.sendall(block)


def slow(connection, stop):
    """A long announced file, sent a kilobyte at a time."""
    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000000\r\n\r\n")
    while not stop.wait(0.02):
        connection.sendall(b"x" * 1024)


def leftovers(cache: Path) -> list[str]:
    return sorted(os.listdir(cache)) if cache.exists() else []


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no hub copy is found
    return tmp_path / "cache"


@pytest.mark.parametrize("respond", [silent, headers_then_stall], ids=["no-answer", "stall"])
def test_a_stalling_server_times_out(cache, respond):
    with raw_server(respond) as url:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"timed out") as error:
            fetch(NAME, base_url=url, cache=cache, progress=False, timeout=1.0)
        assert time.monotonic() - start < 4
    message = str(error.value)
    assert f"{url}/{NAME}" in message and str(cache / NAME) in message, message
    assert leftovers(cache) == []


def test_the_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("VGG_FLAX_DOWNLOAD_TIMEOUT", "2.5")
    assert downloads.download_timeout() == 2.5
    monkeypatch.delenv("VGG_FLAX_DOWNLOAD_TIMEOUT")
    assert downloads.download_timeout() == downloads.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("VGG_FLAX_DOWNLOAD_TIMEOUT", "0")
    with pytest.raises(ValueError, match="VGG_FLAX_DOWNLOAD_TIMEOUT='0'"):
        downloads.download_timeout()


def test_endless_data_is_refused_at_the_size_limit(cache, monkeypatch):
    with raw_server(endless) as url:
        # A known size: refused just past it (plus the slack), long before the disk fills.
        with pytest.raises(DownloadError, match=r"more than the \d+ bytes allowed"):
            fetch(NAME, base_url=url, cache=cache, progress=False, size=100_000)
        assert leftovers(cache) == []
        # An unknown size: refused at UNKNOWN_SIZE_LIMIT.
        monkeypatch.setattr(downloads, "UNKNOWN_SIZE_LIMIT", 300_000)
        with pytest.raises(DownloadError, match="more than the 300000 bytes allowed"):
            fetch(NAME, base_url=url, cache=cache, progress=False)
    assert leftovers(cache) == []


def test_a_registry_size_caps_the_download(cache, monkeypatch):
    entry = weights.TORCHVISION_WEIGHTS["vgg16"]
    assert weights.expected_size(entry.source.file) == entry.source.size
    monkeypatch.setattr(downloads, "SIZE_SLACK", 0)
    with raw_server(headers_then_stall) as url:  # announces 100,000 bytes
        with pytest.raises(DownloadError, match="announces 100000 bytes, more than the 1000"):
            fetch(NAME, base_url=url, cache=cache, progress=False, size=1000)
    assert leftovers(cache) == []


def test_an_unreachable_server_fails_fast_naming_url_and_cache(cache):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models"
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        fetch(NAME, base_url=url, cache=cache, progress=False)
    assert time.monotonic() - start < 2
    message = str(error.value)
    assert f"cannot download {url}/{NAME}" in message, message
    assert str(cache / NAME) in message and "by hand" in message and "0123abcd" in message
    assert leftovers(cache) == []


def _fetch_in_subprocess(url: str, cache: Path) -> subprocess.Popen:
    code = (
        "import sys; from vgg_flax.weights.download import fetch; "
        f"fetch({NAME!r}, base_url=sys.argv[1], cache=sys.argv[2], progress=False)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, url, str(cache)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_partial(cache: Path, process: subprocess.Popen) -> list[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partials = [n for n in leftovers(cache) if n.endswith(".part")]
        if partials:
            return partials
        if process.poll() is not None:
            raise AssertionError(f"fetch ended early: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no partial download appeared")


def test_sigterm_during_a_download_leaves_no_partial(cache):
    with raw_server(slow) as url:
        process = _fetch_in_subprocess(url, cache)
        _wait_for_partial(cache, process)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM  # it still ends as SIGTERM ends a process
    assert leftovers(cache) == []


def test_sigterm_just_after_the_partial_is_made_leaves_none(cache, monkeypatch):
    """The narrowest window: SIGTERM as open() returns the new .part file, before any write."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    real_open = open

    def open_then_sigterm(path, *args, **kwargs):
        made = real_open(path, *args, **kwargs)
        if str(path).endswith(".part"):
            signal.raise_signal(signal.SIGTERM)  # its handler raises here, in open's caller
        return made

    monkeypatch.setattr(downloads, "open", open_then_sigterm, raising=False)
    try:
        with pytest.raises(DownloadError, match="SIGTERM"):
            fetch(NAME, base_url="http://127.0.0.1:9", cache=cache, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]  # re-sent to the handler that was there before
    assert leftovers(cache) == []


def test_after_sigkill_the_next_fetch_removes_the_partial(cache, tmp_path):
    with raw_server(slow) as url:
        process = _fetch_in_subprocess(url, cache)
        [partial] = _wait_for_partial(cache, process)
        process.kill()
        process.wait(timeout=30)
    assert leftovers(cache) == [partial]  # what SIGKILL leaves: a .part, never the file's name
    # The next fetch (of any file, here from a server that does not answer) removes it.
    with raw_server(silent) as url, pytest.raises(DownloadError, match="timed out"):
        fetch(NAME, base_url=url, cache=cache, progress=False, timeout=0.5)
    assert leftovers(cache) == []


def test_a_live_download_keeps_its_partial(cache):
    cache.mkdir()
    with downloads._partial(str(cache), NAME) as (out, path):
        out.write(b"half")
        assert remove_stale_partials(cache) == [] and os.path.exists(path)
    stale = cache / f".{NAME}.999999999-0123abcd.part"  # a pid that cannot exist
    stale.write_bytes(b"half")
    assert remove_stale_partials(cache) == [str(stale)]
    assert leftovers(cache) == []
