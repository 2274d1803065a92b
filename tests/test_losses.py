"""Content, style and TV losses against piq and PyTorch on the same torchvision trunk.

The piq and PyTorch comparisons run full-width torchvision vgg16/vgg19 trunks (seeded random
weights through the converter). The preset's total, its gradients and the remat and bfloat16
options are the loss's own arithmetic, checked on a narrow seeded VGG-16 (`_narrow_trunk`): the
same layer names at an eighth of the channels.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import piq
import pytest
import torch
from vgg_flax.experiments.perceptual_example import random_trunk

from vgg_flax import create_model
from vgg_flax.formats.torchvision import torchvision_modules
from vgg_flax.parity.torchvision import float32_precision, torch_model
from vgg_flax.perceptual import losses
from vgg_flax.weights.loading import load

# XLA's quick compile (no LLVM optimisation): the same arithmetic, compiled in a third of the time.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.cache
def _trunks(arch: str):
    """A seeded random torchvision `arch` (ReLUs not in place) and its vgg-flax conversion."""
    net = torch_model(arch)
    for module in net.features:
        if isinstance(module, torch.nn.ReLU):
            # piq reads each tap as the module output; an in-place ReLU would overwrite a
            # pre-activation tap (convN_M) with its rectified value.
            module.inplace = False
    return net, load(net.state_dict(), arch, head="drop")


def _narrow_trunk():
    """A seeded random VGG-16 trunk at an eighth of the channels (no torchvision reference)."""
    return random_trunk(model=create_model("vgg16", width=0.125, head_width=8), bias=0.1)


def _index(arch: str, tap: str) -> str:
    modules = {name: path for path, name in torchvision_modules(arch).items()}
    return modules[tap].split(".")[1]


def _images(shape, seed):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _torch(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _rel(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _feature_shapes(loss, x, taps):
    return {name: value.shape for name, value in loss.features(x, taps).items()}


@pytest.mark.parametrize(
    ("arch", "layers", "criterion"),
    [
        ("vgg16", {"relu2_2": 1.0, "relu3_3": 0.5}, "mse"),
        ("vgg19", {"conv5_4": 1.0}, "l1"),  # ESRGAN: before the ReLU
        ("vgg19", {"conv3_1": 2.0, "relu5_4": 1.0}, "mse"),  # piq: network order
    ],
)
def test_content_loss_matches_piq(arch, layers, criterion):
    net, trunk = _trunks(arch)
    loss = losses.perceptual_loss(trunk=trunk, content_layers=layers, criterion=criterion)
    x, y = _images((2, 64, 64, 3), 0), _images((2, 64, 64, 3), 1)
    shapes = _feature_shapes(loss, x, list(layers))
    # piq averages over space and sums over channels: weight / C gives the mean over H W C.
    reference = piq.ContentLoss(
        net.features,
        layers=[_index(arch, name) for name in layers],
        weights=[w / shapes[name][-1] for name, w in layers.items()],
        distance="mse" if criterion == "mse" else "mae",
        reduction="none",
    )
    with float32_precision(), torch.no_grad():
        theirs = reference(_torch(x), _torch(y)).numpy()
        total, parts = loss(x, content=y)
    assert _rel(parts["content"], theirs) < 1e-5
    assert abs(float(total) / theirs.mean() - 1) < 1e-5


@pytest.mark.parametrize("gram", ["gatys", "johnson"])
def test_style_loss_matches_piq(gram):
    net, trunk = _trunks("vgg16")
    layers = {"relu1_2": 1.0, "relu2_2": 0.5, "relu3_3": 2.0, "relu4_3": 1.0}
    loss = losses.perceptual_loss(trunk=trunk, style_layers=layers, gram=gram)
    # piq's Gram is unnormalised, so its weights can match ours only for a same-size target
    # (other sizes: the next test); its batch of targets repeats the one style image.
    x, style = _images((2, 64, 64, 3), 2), np.repeat(_images((1, 64, 64, 3), 3), 2, axis=0)
    shapes = _feature_shapes(loss, x, list(layers))

    def piq_weight(name, w):
        # piq: the mean over C x C of (G_x - G_s)^2 with G = F^T F.
        _, h, width, c = shapes[name]
        if gram == "gatys":  # sum / (4 C^2 M^2) = mean / (4 M^2)
            return w / (4 * (h * width) ** 2)
        return w * c**2 / (c * h * width) ** 2  # sum of (G / CHW) differences squared

    reference = piq.StyleLoss(
        net.features,
        layers=[_index("vgg16", name) for name in layers],
        weights=[piq_weight(name, w) for name, w in layers.items()],
        reduction="none",
    )
    with float32_precision(), torch.no_grad():
        theirs = reference(_torch(x), _torch(style)).numpy()
        _, parts = loss(x, style=style[:1])
    assert _rel(parts["style"], theirs) < 1e-5


def test_gram_normalisations_follow_the_formulas_in_torch():
    net, trunk = _trunks("vgg16")
    loss = losses.perceptual_loss(trunk=trunk, style_layers={"relu2_1": 1.0})
    x, s = _images((2, 40, 56, 3), 4), _images((1, 72, 48, 3), 5)  # style of another size
    ours = {g: loss.replace(gram=g)(x, style=s)[1]["style"] for g in losses.GRAMS}
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    cut = int(_index("vgg16", "relu2_1")) + 1
    with float32_precision(), torch.no_grad():
        fx, fs = (net.features[:cut]((_torch(a) - mean) / std) for a in (x, s))
        gx = torch.einsum("nchw,ndhw->ncd", fx, fx)
        gs = torch.einsum("nchw,ndhw->ncd", fs, fs)
        c, (hx, wx), (hs, ws) = fx.shape[1], fx.shape[2:], fs.shape[2:]
        gatys = ((gx - gs) ** 2).sum((1, 2)) / (4 * c**2 * (hx * wx) ** 2)
        johnson = ((gx / (c * hx * wx) - gs / (c * hs * ws)) ** 2).sum((1, 2))
    # Gatys's formula assumes equal sizes; with another style size it compares raw Grams.
    assert _rel(ours["gatys"], gatys.numpy()) < 1e-5
    assert _rel(ours["johnson"], johnson.numpy()) < 1e-5


def test_total_variation_matches_tensorflow_and_torch():
    import tensorflow as tf

    x = _images((2, 20, 24, 3), 6)
    ours = losses.total_variation(x, power=1.0)
    np.testing.assert_allclose(ours, tf.image.total_variation(tf.constant(x)).numpy(), rtol=1e-5)
    t = _torch(x)
    squared = ((t[:, :, 1:] - t[:, :, :-1]) ** 2).sum((1, 2, 3)) + (
        (t[..., 1:] - t[..., :-1]) ** 2
    ).sum((1, 2, 3))
    np.testing.assert_allclose(losses.total_variation(x, power=2.0), squared, rtol=1e-5)


def test_preset_total_gradient_and_options():
    loss = losses.perceptual_loss("johnson", trunk=_narrow_trunk())
    assert loss.content_layers == (("relu2_2", 1.0),)
    assert [name for name, _ in loss.style_layers] == ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    x, c, s = _images((2, 32, 32, 3), 7), _images((2, 32, 32, 3), 8), _images((1, 32, 32, 3), 9)
    # Each computation jitted with FAST (one quick compile each, not an eager dispatch per op).
    jit = functools.partial(jax.jit, compiler_options=FAST)
    grams = jit(lambda fn: fn.style_targets(s))(loss)
    total, parts = jit(lambda fn, a: fn(a, content=c, style=grams))(loss, x)
    expected = 1.0 * parts["content"] + 5.0 * parts["style"] + 1e-6 * parts["tv"]
    np.testing.assert_allclose(total, expected.mean(), rtol=1e-6)

    def objective(images, fn):
        return fn(images, content=c, style=grams)[0]

    image_grad, trunk_grad = jit(jax.grad(objective, argnums=(0, 1)))(x, loss)
    assert np.any(image_grad) and not any(np.any(g) for g in jax.tree.leaves(trunk_grad))
    remat = jit(jax.grad(objective))(x, loss.replace(remat=True))
    np.testing.assert_allclose(remat, image_grad, rtol=1e-5, atol=1e-9)
    low_total, low_parts = jit(lambda fn: fn(x, content=c, style=s))(
        loss.replace(dtype=jnp.bfloat16)
    )
    assert low_parts["style"].dtype == jnp.float32
    assert abs(float(low_total) / float(total) - 1) < 5e-2


def test_recipes_and_errors():
    assert losses.RECIPES["srgan"].content == (("relu5_4", 1.0),)
    assert losses.RECIPES["esrgan"].content == (("conv5_4", 1.0),)
    _, trunk = _trunks("vgg16")
    with pytest.raises(ValueError, match="conv5_4"):
        losses.perceptual_loss("esrgan", trunk=trunk)  # VGG-16 has no conv5_4
    with pytest.raises(ValueError, match="unknown recipe"):
        losses.perceptual_loss("vgg54", trunk=trunk)
    with pytest.raises(ValueError, match="criterion"):
        losses.perceptual_loss(trunk=trunk, content_layers={"relu1_1": 1.0}, criterion="l3")
