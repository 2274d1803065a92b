"""DISTS against `dists-pytorch` and `piq.DISTS`: one seeded torchvision vgg16, the real alpha/beta.

Both references build their trunk with torchvision's pretrained vgg16 (a download): here its
constructor is patched to hand them copies of one seeded random vgg16, whose weights vgg-flax
loads too. piq downloads its own copy of alpha and beta, which it does not divide by their sum
as the authors' code does: it gets the published file's, divided by their sum, so that both
references compute the same DISTS. torch runs single-threaded (the `one_torch_thread` fixture):
it is the reference, and the test workers already use every core.
"""

import copy
import functools
import hashlib
import http.server
import os
import threading
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from DISTS_pytorch import DISTS_pt
from PIL import Image
from sklearn.datasets import load_sample_images
from vgg_flax.experiments.perceptual_example import random_trunk

from vgg_flax import create_model
from vgg_flax.parity.piq_dists import offline_piq_dists
from vgg_flax.parity.torchvision import float32_precision
from vgg_flax.perceptual import dists_weights, lpips_heads
from vgg_flax.perceptual.dists import DISTS, load_dists
from vgg_flax.weights import registry
from vgg_flax.weights.loading import load

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def _setup():
    torch.manual_seed(0)
    trunk = torchvision.models.vgg16()
    weights = torch.load(dists_weights.find_weights(), map_location="cpu")
    with mock.patch.object(DISTS_pt.models, "vgg16", lambda *a, **k: copy.deepcopy(trunk)):
        authors = DISTS_pt.DISTS(load_weights=False)
    authors.alpha.data, authors.beta.data = weights["alpha"], weights["beta"]
    piq_dists = offline_piq_dists(trunk)
    state = {key: value.numpy() for key, value in trunk.state_dict().items()}
    metric = load_dists(trunk=tuple(load(state, "vgg16", head="drop")[:2]))
    return authors, piq_dists, metric


def _torch(x: np.ndarray, grad: bool = False, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(x.transpose(0, 3, 1, 2), dtype=dtype, requires_grad=grad)


def _rel(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _random(shape, seed):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _photos(width: int = 128) -> np.ndarray:
    """scikit-learn's two photos (china, flower), resized to `width` wide, [0, 1]."""
    china, flower = load_sample_images().images
    height = round(width * china.shape[0] / china.shape[1])
    small = [Image.fromarray(p).resize((width, height), Image.BICUBIC) for p in (china, flower)]
    return np.stack([np.asarray(p, np.float32) / 255 for p in small])


def test_distances_match_dists_pytorch_and_piq():
    authors, piq_dists, metric = _setup()
    photos = _photos()
    cases = [
        (photos[:1], photos[1:]),  # china against flower
        (_random((3, 97, 131, 3), 1), _random((3, 97, 131, 3), 2)),  # odd sizes, a batch of 3
    ]
    with float32_precision(), torch.no_grad():
        for x, y in cases:
            ours = np.asarray(metric(x, y))
            assert np.all(ours > 0.01)  # not trivial distances
            assert ours.shape == (x.shape[0],)
            theirs = authors(_torch(x), _torch(y)).numpy().reshape(-1)
            assert _rel(ours, theirs) < 1e-5
            assert _rel(ours, piq_dists(_torch(x), _torch(y)).numpy()) < 1e-5


def test_input_gradients_as_close_as_torch_float32_to_float64():
    authors, _, metric = _setup()
    x, y = _random((1, 32, 48, 3), 3), _random((1, 32, 48, 3), 4)
    grads = {}
    with float32_precision():
        for dtype in (torch.float64, torch.float32):
            reference = copy.deepcopy(authors).double() if dtype == torch.float64 else authors
            tx = _torch(x, grad=True, dtype=dtype)
            reference(tx, _torch(y, dtype=dtype), require_grad=True).sum().backward()
            grads[dtype] = tx.grad.numpy().transpose(0, 2, 3, 1)
        ours = jax.grad(lambda a: metric(a, y).sum())(x)
    torch_error = _rel(grads[torch.float32], grads[torch.float64])
    assert _rel(ours, grads[torch.float64]) <= max(2 * torch_error, 1e-6)


# XLA's quick compile (no LLVM optimisation): the narrow net's programs, compiled in a fraction
# of the time, compute the same.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.cache
def _narrow():
    """A DISTS on a narrow seeded VGG-16 with random alpha/beta: the options need no full width."""
    model = create_model("vgg16", width=0.125, head_width=8, pooling="l2")
    _, variables = random_trunk(model=model)
    channels = 3 + 8 + 16 + 32 + 64 + 64
    alpha, beta = jax.random.uniform(jax.random.key(1), (2, channels))
    return DISTS(variables, alpha, beta, model)


def test_jit_broadcast_bfloat16_and_remat():
    metric = _narrow()
    x, y = _random((1, 32, 32, 3), 5), _random((3, 32, 32, 3), 6)
    # Every call in an outer jit with FAST (the metric's own jit is inlined in it).
    jit = functools.partial(jax.jit, compiler_options=FAST)
    call = jit(lambda m, a, b: m(a, b))
    jitted = call(metric, x, y)
    each = call(metric, np.repeat(x, 3, axis=0), y)  # the broadcast pair, repeated
    np.testing.assert_allclose(jitted, each, rtol=1e-5)
    low = call(metric.replace(dtype=jnp.bfloat16), x, y)
    assert low.dtype == jnp.float32 and _rel(low, jitted) < 5e-2
    # One jitted program per gradient (faster to compile than grad through the inner jit).
    gradient = jax.grad(lambda a, m: m(a, y[:1]).sum())
    grad = jit(gradient)
    np.testing.assert_allclose(
        grad(x, metric.replace(remat=True)), grad(x, metric), rtol=1e-5, atol=1e-9
    )
    jaxpr = str(jax.make_jaxpr(gradient)(x, metric.replace(remat=True)))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    with pytest.raises(ValueError, match="one weight per channel"):
        metric.replace(alpha=metric.alpha[1:])(x, y)
    with pytest.raises(ValueError, match="at least 32x32.*got 16x32; resize"):
        metric(x[:, :16], y[:, :16])


def test_narrow_trunk_is_refused_by_load_dists():
    metric = _narrow()
    with pytest.raises(ValueError, match="full-width VGG-16"):
        load_dists(trunk=(metric.model, metric.variables))


def test_weights_found_without_importing_verified_and_read_strictly(monkeypatch, tmp_path):
    path = dists_weights.find_weights(cache=tmp_path)
    assert "torchmetrics" in path
    shipped = open(path, "rb").read()
    assert hashlib.sha256(shipped).hexdigest() == registry.DISTS_WEIGHTS_SHA256
    reference = torch.load(path, map_location="cpu")
    alpha, beta = dists_weights.read_weights(path)
    np.testing.assert_array_equal(alpha, reference["alpha"].view(-1))
    np.testing.assert_array_equal(beta, reference["beta"].view(-1))
    # Without torchmetrics, dists-pytorch's copy serves; without either (and a wrong file at
    # the environment's root), the error lists every place and says how to get the file.
    real = lpips_heads.package_dir
    monkeypatch.setattr(
        lpips_heads, "package_dir", lambda name: None if name == "torchmetrics" else real(name)
    )
    assert "DISTS_pytorch" in dists_weights.find_weights(cache=tmp_path)
    monkeypatch.setattr(lpips_heads, "package_dir", lambda name: None)
    wrong = tmp_path / "prefix"
    wrong.mkdir()
    (wrong / "weights.pt").write_bytes(shipped[:-1] + b"x")
    monkeypatch.setattr(dists_weights.sys, "prefix", str(wrong))
    with pytest.raises(FileNotFoundError) as error:
        dists_weights.find_weights(cache=tmp_path)
    message = str(error.value)
    assert "SHA-256 differs" in message and str(tmp_path) in message
    assert "download_weights" in message and registry.DISTS_WEIGHTS_URL in message
    cases = {
        "missing": ({"alpha": reference["alpha"]}, "beta"),
        "misshaped": (reference | {"beta": torch.zeros(1, 1472, 1, 1)}, "beta"),
        "unknown": (reference | {"gamma": torch.zeros(1)}, "gamma"),
    }
    for name, (state, culprit) in cases.items():
        bad = tmp_path / f"{name}.pt"
        torch.save(state, bad)
        with pytest.raises(lpips_heads.HeadFileError, match=culprit):
            dists_weights.read_weights(bad)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_weights_checks_sha256(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    shipped = open(dists_weights.find_weights(), "rb").read()
    (served / "weights.pt").write_bytes(shipped)
    (served / "wrong.pt").write_bytes(shipped[:-1] + b"x")
    handler = functools.partial(_Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        cache = tmp_path / "cache"
        path = dists_weights.download_weights(url=f"{url}/weights.pt", cache=cache, progress=False)
        assert open(path, "rb").read() == shipped
        monkeypatch.setattr(lpips_heads, "package_dir", lambda name: None)
        monkeypatch.setattr(dists_weights.sys, "prefix", str(tmp_path))
        assert dists_weights.find_weights(cache=cache) == path
        os.remove(path)
        with pytest.raises(ValueError, match="SHA-256"):
            dists_weights.download_weights(url=f"{url}/wrong.pt", cache=cache, progress=False)
        assert os.listdir(cache) == []
    finally:
        httpd.shutdown()
        httpd.server_close()
