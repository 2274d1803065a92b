"""LPIPS (VGG, v0.1 and v0.0) against the `lpips` package: same random trunk, its real heads.

torch runs single-threaded (the `one_torch_thread` fixture): it is the reference, and the test
workers already use every core.
"""

import copy
import functools
import hashlib
import http.server
import os
import threading

import jax
import jax.numpy as jnp
import lpips
import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_images

from vgg_flax.parity.torchvision import float32_precision
from vgg_flax.perceptual import lpips_heads
from vgg_flax.perceptual.lpips import load_lpips, trunk_from_lpips
from vgg_flax.weights import registry as weights

# The options' tests call the metric inside an outer jit with XLA's quick compile (no LLVM
# optimisation; the metric's own jit is inlined): their small images' programs compile in a
# fraction of the time and compute the same.
quick_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def _pair(version: str, spatial: bool = False):
    if spatial:
        # lpips.LPIPS reads `spatial` in its forward only (its constructor just stores it): the
        # spatial reference is the same trunk and heads with the flag set, as
        # LPIPS(spatial=True) would hold them; ours takes `spatial=` per call.
        reference, metric = _pair(version)
        spatial_reference = copy.copy(reference)  # shares the modules, not the flag
        spatial_reference.spatial = True
        return spatial_reference, metric
    torch.manual_seed(0)
    reference = lpips.LPIPS(net="vgg", pnet_rand=True, version=version, verbose=False)
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    return reference, load_lpips(version, trunk=trunk_from_lpips(state))


def _torch(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=grad)


def _rel(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _random(shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@functools.cache
def _photos(scale: int = 1) -> np.ndarray:
    china, flower = load_sample_images().images
    images = np.stack([china, flower])[:, ::scale, ::scale]
    return (images.astype(np.float32) / 127.5 - 1).astype(np.float32)


@pytest.mark.parametrize("version", ["0.1", "0.0"])
def test_distances_match_lpips_on_photos_and_random_images(version):
    reference, metric = _pair(version)
    # The photos at half and a third of their size (214x320, 143x214: the poolings meet odd
    # sides), and a batch of two random pairs; the spatial test takes the photos at a quarter.
    photos = _photos(2 if version == "0.1" else 3)
    cases = [(photos[:1], photos[1:]), (_random((2, 64, 64, 3), 1), _random((2, 64, 64, 3), 2))]
    with float32_precision(), torch.no_grad():
        for x0, x1 in cases:
            total, layers = metric(x0, x1, per_layer=True)
            their_total, their_layers = reference(_torch(x0), _torch(x1), retPerLayer=True)
            assert total.shape == (x0.shape[0],)
            assert _rel(total, their_total.numpy().reshape(-1)) < 1e-5
            for ours, theirs in zip(layers, their_layers, strict=True):
                assert _rel(ours, theirs.numpy().reshape(-1)) < 1e-5


@pytest.mark.parametrize("version", ["0.1", "0.0"])
def test_spatial_maps_match_lpips(version):
    reference, metric = _pair(version, spatial=True)
    # 48x80: the upsampling of relu5_3 (3x5) to a non-square size, not an integer multiple.
    cases = [(_random((2, 48, 80, 3), 5), _random((2, 48, 80, 3), 6)), _photos(4)[:, None]]
    with float32_precision(), torch.no_grad():
        for x0, x1 in cases:
            ours = metric(x0, x1, spatial=True)
            theirs = reference(_torch(x0), _torch(x1)).numpy()[:, 0]
            assert ours.shape == x0.shape[:3]
            assert _rel(ours, theirs) < 1e-5


@pytest.mark.parametrize("version", ["0.1", "0.0"])
def test_input_gradients_match_lpips(version):
    reference, metric = _pair(version)
    x0, x1 = _random((2, 64, 64, 3), 7), _random((2, 64, 64, 3), 8)
    with float32_precision():
        t0 = _torch(x0, grad=True)
        reference(t0, _torch(x1)).sum().backward()
        ours = jax.grad(lambda x: metric(x, x1).sum())(x0)
    assert _rel(ours, t0.grad.numpy().transpose(0, 2, 3, 1)) < 1e-4


def test_jit_broadcast_and_no_trunk_gradient():
    _, metric = _pair("0.1")
    x0, x1 = _random((1, 64, 64, 3), 9), _random((3, 64, 64, 3), 10)
    call = quick_jit(lambda m, a, b: m(a, b))
    jitted = call(metric, x0, x1)
    each = [call(metric, x0, x1[i : i + 1])[0] for i in range(3)]
    np.testing.assert_allclose(jitted, each, rtol=1e-5)
    grads = quick_jit(jax.grad(lambda m: m(x0, x1).sum()))(metric)
    assert all(not np.any(g) for g in jax.tree.leaves(grads.variables))
    same = call(metric, x1[:1], x1[:1])
    assert float(same[0]) == 0.0


def test_bfloat16_and_remat_options():
    _, metric = _pair("0.1")
    x0, x1 = _random((2, 32, 32, 3), 11), _random((2, 32, 32, 3), 12)
    call = quick_jit(lambda m, a, b: m(a, b))
    exact = call(metric, x0, x1)
    low = call(metric.replace(dtype=jnp.bfloat16), x0, x1)
    assert low.dtype == jnp.float32 and _rel(low, exact) < 3e-2
    gradient = jax.grad(lambda x, m: m(x, x1).sum())
    grad = quick_jit(gradient)
    np.testing.assert_allclose(
        grad(x0, metric.replace(remat=True)), grad(x0, metric), rtol=1e-5, atol=1e-9
    )
    jaxpr = str(jax.make_jaxpr(gradient)(x0, metric.replace(remat=True)))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_head_files_are_found_without_importing_and_verified(monkeypatch, tmp_path):
    shipped = {v: lpips_heads.find_heads(v, cache=tmp_path) for v in ("0.1", "0.0")}
    for version, path in shipped.items():
        assert path.endswith(os.path.join(f"v{version}", "vgg.pth"))
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert digest == weights.LPIPS_VGG_HEADS[version]
        assert os.path.getsize(path) == weights.LPIPS_VGG_HEAD_SIZES[version]
        reference = torch.load(path, map_location="cpu")
        heads = lpips_heads.read_heads(path)
        for index, head in enumerate(heads):
            np.testing.assert_array_equal(head, reference[f"lin{index}.model.1.weight"].view(-1))
    # Without the lpips package, torchmetrics's copy of the v0.1 file serves.
    real = lpips_heads.package_dir
    monkeypatch.setattr(
        lpips_heads, "package_dir", lambda name: None if name == "lpips" else real(name)
    )
    assert "torchmetrics" in lpips_heads.find_heads("0.1", cache=tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        lpips_heads.find_heads("0.0", cache=tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and lpips_heads.head_url("0.0") in message
    assert "download_heads" in message


def test_head_files_are_read_strictly(tmp_path):
    good = dict(torch.load(lpips_heads.find_heads("0.1"), map_location="cpu"))
    cases = {
        "missing": ({k: v for k, v in good.items() if not k.startswith("lin3")}, "lin3"),
        "misshaped": (good | {"lin2.model.1.weight": torch.zeros(1, 384, 1, 1)}, "lin2"),
        "unknown": (good | {"extra.weight": torch.zeros(1)}, "extra.weight"),
    }
    for name, (state, culprit) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(lpips_heads.HeadFileError, match=culprit):
            lpips_heads.read_heads(path)
    # A whole saved LPIPS module (trunk, scaling buffers, lins alias) is accepted.
    whole = tmp_path / "whole.pth"
    torch.save(_pair("0.1")[0].state_dict(), whole)
    assert [h.shape[0] for h in lpips_heads.read_heads(whole)] == [64, 128, 256, 512, 512]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    (served / "v0.1").mkdir(parents=True)
    (served / "v0.0").mkdir()
    handler = functools.partial(_Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_heads_checks_sha256(server, tmp_path, monkeypatch):
    served, url = server
    shipped = open(lpips_heads.find_heads("0.1"), "rb").read()
    (served / "v0.1" / "vgg.pth").write_bytes(shipped)
    (served / "v0.0" / "vgg.pth").write_bytes(shipped)  # the wrong file for v0.0
    cache = tmp_path / "cache"
    path = lpips_heads.download_heads("0.1", base_url=url, cache=cache, progress=False)
    assert open(path, "rb").read() == shipped
    monkeypatch.setattr(lpips_heads, "package_dir", lambda name: None)
    assert lpips_heads.find_heads("0.1", cache=cache) == path
    with pytest.raises(ValueError, match="SHA-256"):
        lpips_heads.download_heads("0.0", base_url=url, cache=cache, progress=False)
    assert sorted(os.listdir(cache)) == [os.path.basename(path)]
