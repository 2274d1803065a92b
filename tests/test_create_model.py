"""`pretrained(name, num_classes=N)`, `create_model(name)`, the model lists and the feature pyramid.

Pretrained weights are a seeded torchvision vgg11 that the test writes into the weights cache
under a registry entry renamed to its hash (as tests/test_pretrained.py does): no download.
"""

import dataclasses
import functools
import hashlib

import jax
import numpy as np
import pytest
import torch
import torchvision

import vgg_flax
from vgg_flax.models.features import feature_info
from vgg_flax.weights import registry as weights
from vgg_flax.weights.factory import weights_name


@pytest.fixture(scope="module")
def vgg11(tmp_path_factory):
    """(torchvision vgg11 with seeded weights, cache folder holding its .pth, registry entry)."""
    torch.manual_seed(0)
    net = torchvision.models.vgg11().eval()
    cache = tmp_path_factory.mktemp("cache")
    path = cache / "vgg11.pth"
    torch.save(net.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    name = f"vgg11-{digest}.pth"
    path.rename(cache / name)
    entry = weights.TORCHVISION_WEIGHTS["vgg11"]
    entry = dataclasses.replace(entry, source=dataclasses.replace(entry.source, file=name))
    return net, cache, entry


@pytest.fixture()
def registry(vgg11, monkeypatch, tmp_path):
    net, cache, entry = vgg11
    monkeypatch.setitem(weights.TORCHVISION_WEIGHTS, "vgg11", entry)
    monkeypatch.setenv("VGG_FLAX_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("VGG_FLAX_BASE_URL", "http://127.0.0.1:9/")  # never reached
    return net


def _torch_nhwc(x):
    return x.permute(0, 2, 3, 1).numpy()


def test_pretrained_with_a_fresh_head(registry):
    net = registry
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fc7 = net.classifier[:5](torch.flatten(net.avgpool(net.features(x)), 1)).numpy()
    model, variables, usage = vgg_flax.pretrained("A", num_classes=10)
    assert usage.architecture["num_classes"] == 10 and usage.class_names is None
    assert (model.arch, model.batch_norm, model.num_classes) == ("A", False, 10)
    params = variables["params"]
    assert params["fc8"]["kernel"].shape == (1, 1, 4096, 10)
    np.testing.assert_array_equal(params["fc8"]["bias"], np.zeros(10))
    assert 0.005 < float(np.std(params["fc8"]["kernel"])) < 0.015  # N(0, 0.01), as fc8's init
    both = jax.jit(functools.partial(model.apply, features=["relu7", "logits"]))
    found = both(variables, _torch_nhwc(x))
    np.testing.assert_allclose(found["relu7"], fc7, rtol=1e-4, atol=1e-5)
    assert found["logits"].shape == (2, 10)
    # The name form, and all 1000 classes: the weights' own head, equal to torchvision's logits.
    model, variables, usage = vgg_flax.pretrained("vgg11")
    assert usage.metrics["acc1"] == 69.020 and len(usage.class_names) == 1000
    with torch.no_grad():
        expected = net(x).numpy()
    logits = jax.jit(model.apply)(variables, _torch_nhwc(x))
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_weights_names():
    assert weights_name("A") == weights_name("vgg11") == "vgg11"
    assert weights_name("D", batch_norm=True) == weights_name("vgg16_bn") == "vgg16_bn"
    assert weights_name("vgg16_caffe") == "vgg16_caffe"


def test_pretrained_errors_name_the_fix():
    with pytest.raises(ValueError, match="vgg_flax.pretrained\\('vgg11', num_classes=10\\)"):
        vgg_flax.create_model("vgg11", pretrained=True, num_classes=10)
    with pytest.raises(ValueError, match="no pretrained ImageNet weights for VGG C"):
        vgg_flax.pretrained("C")
    with pytest.raises(ValueError, match="width cannot be set"):
        vgg_flax.pretrained("vgg11", width=0.5)
    with pytest.raises(ValueError, match="no pretrained weights named 'vgg12'"):
        vgg_flax.pretrained("vgg12")


def test_model_lists():
    models = vgg_flax.list_models()
    assert {"A", "A-LRN", "E", "vgg16", "vgg16_bn"} <= set(models)
    for name in models:
        assert isinstance(vgg_flax.create_model(name), vgg_flax.VGG)
    pretrained = vgg_flax.list_pretrained()
    assert {"vgg11", "vgg19_bn", "vgg16_caffe", "vgg16_features"} <= set(pretrained)


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"])
def test_feature_pyramid_matches_torchvision_stages(name):
    """The five stages equal torchvision's `features[:i]` before each MaxPool2d (timm's split)."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)().eval()
    with torch.no_grad():
        for module in net.modules():  # non-trivial running statistics for the BatchNorm variant
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model, variables, _ = vgg_flax.load(net.state_dict(), name, head="drop")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    pyramid = jax.jit(vgg_flax.feature_pyramid, static_argnums=0, static_argnames="stages")
    stages = pyramid(model, variables, _torch_nhwc(x))
    info = feature_info(model)
    assert [s.channels for s in info] == [64, 128, 256, 512, 512]
    assert [s.reduction for s in info] == [1, 2, 4, 8, 16]
    assert info[0].name == "relu1_1" and info[4].name == "relu5_2"
    pools = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert len(stages) == len(pools) == 5
    for stage, meta, end in zip(stages, info, pools, strict=True):
        with torch.no_grad():
            expected = _torch_nhwc(net.features[:end](x))
        assert stage.shape == (1, 64 // meta.reduction, 96 // meta.reduction, meta.channels)
        np.testing.assert_allclose(stage, expected, rtol=1e-4, atol=1e-4)
    [last] = pyramid(model, variables, _torch_nhwc(x), stages=(4,))
    np.testing.assert_allclose(last, stages[4], rtol=1e-5, atol=1e-5)  # XLA may fuse otherwise
    with pytest.raises(ValueError, match="stages 0..4"):
        vgg_flax.feature_pyramid(model, variables, _torch_nhwc(x), stages=[5])
