"""Downloading torchvision's weights, from a server on 127.0.0.1 that the tests run themselves."""

import dataclasses
import functools
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest
import torch

import vgg_flax
from vgg_flax.formats.torchvision import torchvision_entries
from vgg_flax.weights import registry as weights
from vgg_flax.weights.download import fetch


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []
    short: set[str] = set()  # files whose body is cut off after half the announced length

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        name = self.path.lstrip("/")
        if name in self.short:
            data = open(os.path.join(self.directory, name), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    _Handler.requests, _Handler.short = [], set()
    handler = functools.partial(_Handler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/models"
    httpd.shutdown()
    httpd.server_close()


def _publish(folder, stem, data):
    name = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (folder / name).write_bytes(data)
    return name


def _no_partials(folder):
    return [f for f in os.listdir(folder) if f.endswith(".part")] == []


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "cache"


def test_downloads_once_with_progress(server, cache, capsys):
    served, url = server
    data = np.random.default_rng(0).bytes(300_000)
    (served / "models").mkdir()
    name = _publish(served / "models", "weights", data)
    path = fetch(name, base_url=url + "/", cache=cache)
    assert path == str(cache / name) and open(path, "rb").read() == data
    assert name in capsys.readouterr().err  # tqdm's bar, labelled with the file
    assert fetch(name, base_url=url, cache=cache, progress=False) == path
    assert len(_Handler.requests) == 1  # the second call used the cache
    assert _no_partials(cache)


def test_hash_mismatch_and_cut_download_leave_nothing(server, cache):
    served, url = server
    (served / "models").mkdir()
    (served / "models" / "bad-00000000.pth").write_bytes(b"not the promised bytes")
    with pytest.raises(ValueError, match="SHA-256"):
        fetch("bad-00000000.pth", base_url=url, cache=cache, progress=False)
    name = _publish(served / "models", "cut", np.random.default_rng(1).bytes(100_000))
    _Handler.short.add(f"models/{name}")
    with pytest.raises(Exception, match="stopped after|IncompleteRead|incomplete|bytes"):
        fetch(name, base_url=url, cache=cache, progress=False)
    assert os.listdir(cache) == []
    with pytest.raises(ValueError, match="sha256 prefix"):
        fetch("no-hash.pth", cache=cache)


def test_reuses_torch_hub_copy(server, cache, tmp_path):
    _served, url = server
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    name = _publish(hub, "hub", b"weights from torch.hub")
    assert fetch(name, base_url=url, cache=cache, progress=False) == str(hub / name)
    assert _Handler.requests == []


def test_pretrained_downloads_and_converts(server, cache, monkeypatch):
    served, url = server
    (served / "models").mkdir()
    # A real vgg11 state dict, each tensor a small random row repeated to full size (stored in
    # full: the reader refuses files whose views would expand far beyond their stored bytes).
    torch.manual_seed(0)
    state = {
        e.key: torch.randn(e.shape[-1]).half().expand(e.shape).contiguous()
        for e in torchvision_entries("vgg11")
    }
    path = served / "models" / "tmp.pth"
    torch.save(state, path)
    name = _publish(served / "models", "vgg11", path.read_bytes())
    entry = weights.TORCHVISION_WEIGHTS["vgg11"]
    entry = dataclasses.replace(entry, source=dataclasses.replace(entry.source, file=name))
    monkeypatch.setitem(weights.TORCHVISION_WEIGHTS, "vgg11", entry)
    model, variables, _ = vgg_flax.pretrained("vgg11", base_url=url, cache=cache, progress=False)
    assert (model.arch, model.batch_norm, model.num_classes) == ("A", False, 1000)
    fc8 = variables["params"]["fc8"]
    np.testing.assert_array_equal(fc8["bias"], state["classifier.6.bias"].numpy())
    assert fc8["kernel"].shape == (1, 1, 4096, 1000) and fc8["kernel"].dtype == np.float16
    np.testing.assert_array_equal(fc8["kernel"][0, 0, 7], state["classifier.6.weight"][:, 7])
    with pytest.raises(ValueError, match="no pretrained weights named 'vgg12'"):
        vgg_flax.pretrained("vgg12", cache=cache)
