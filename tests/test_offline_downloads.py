"""Offline, preparing a TFDS dataset that must be downloaded fails at once with one clear line.

The host is 127.0.0.1 on a port just closed, so nothing leaves the machine; TFDS itself would
retry such a host for minutes.
"""

from __future__ import annotations

import socket
import time

import pytest
import tensorflow_datasets as tfds

from vgg_flax import cli
from vgg_flax.data import downloads, sources  # noqa: F401  (TensorFlow loaded before timing)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A direct connection: a proxy set in the environment would be checked instead."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/fast-ai-imageclas/imagenette2.tgz"


def test_unreachable_host_fails_fast_with_the_url(closed_url):
    started = time.monotonic()
    with pytest.raises(ValueError) as caught:
        downloads.check_reachable("imagenette", {closed_url: "imagenette2.tgz"})
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert closed_url in message and "imagenette2.tgz" in message and "--manual-dir" in message
    assert "\n" not in message


def test_file_in_the_manual_folder_needs_no_host(closed_url, tmp_path):
    (tmp_path / "imagenette2.tgz").write_bytes(b"")
    downloads.check_reachable("imagenette", {closed_url: "imagenette2.tgz"}, str(tmp_path))


def test_builder_downloads_are_those_of_its_config(tmp_path):
    builder = tfds.builder("imagenette", data_dir=str(tmp_path))  # default: full-size-v2
    assert downloads.expected_downloads(builder) == {
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz": "imagenette2.tgz"
    }


def test_prepare_data_command_fails_in_seconds(closed_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        downloads, "expected_downloads", lambda builder: {closed_url: "imagenette2.tgz"}
    )
    started = time.monotonic()
    argv = ["prepare-data", "--source", "imagenette", "--data-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    assert time.monotonic() - started < 10
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and closed_url in lines[0], lines
    assert not list(tmp_path.rglob("*.tgz*"))  # nothing was downloaded
