"""Preprocessing presets against each family's own code, and folding them into conv1_1."""

import jax
import lpips
import numpy as np
import pytest
import torch
from torchvision import transforms

from vgg_flax import create_model, preprocessing
from vgg_flax.parity.keras import import_keras

RGB = np.random.default_rng(0).random((2, 64, 64, 3), np.float32)  # RGB in [0, 1], NHWC


def test_torchvision_preset_is_torchvision_normalize():
    theirs = transforms.Normalize(preprocessing.TORCHVISION_MEAN, preprocessing.TORCHVISION_STD)
    expected = theirs(torch.from_numpy(RGB.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(preprocessing.preprocess(RGB, "torchvision"), expected, atol=1e-6)


def test_caffe_preset_is_keras_vgg16_preprocess_input():
    keras = import_keras()
    expected = keras.applications.vgg16.preprocess_input(RGB * 255.0)
    np.testing.assert_allclose(preprocessing.preprocess(RGB, "caffe"), expected, atol=1e-4)


def test_lpips_preset_is_lpips_scaling_layer():
    layer = lpips.lpips.ScalingLayer()
    x = torch.from_numpy(RGB.transpose(0, 3, 1, 2)) * 2 - 1  # LPIPS takes RGB in [-1, 1]
    expected = layer(x).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(preprocessing.preprocess(RGB, "lpips"), expected, atol=1e-5)


def test_vgg16_features_preset_matches_the_registry():
    from vgg_flax.weights.registry import TORCHVISION_WEIGHTS

    entry = TORCHVISION_WEIGHTS["vgg16_features"]
    expected = RGB * 255.0 - np.asarray([123.0, 117.0, 104.0])  # amdegroot's SSD means
    np.testing.assert_allclose(preprocessing.preprocess(RGB, "vgg16_features"), expected, atol=1e-4)
    assert entry.preprocessing == preprocessing.PRESETS["vgg16_features"]
    assert entry.features_only


@pytest.fixture(scope="module")
def tiny():
    model = create_model("A", width=0.125, head_width=32, num_classes=10)
    variables = model.init(jax.random.key(0), RGB[:1])
    rng = np.random.default_rng(1)
    conv = variables["params"]["conv1_1"]
    bias = rng.uniform(-0.5, 0.5, conv["bias"].shape).astype(np.float32)
    params = {**variables["params"], "conv1_1": {"kernel": conv["kernel"], "bias": bias}}
    return model, {**variables, "params": params}


def relative(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours) - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("preset", sorted(preprocessing.PRESETS))
def test_folded_preset_gives_the_same_logits(tiny, preset):
    """Channel order and scales fold exactly; what remains is RGB in [0, 1] minus a mean."""
    model, variables = tiny
    expected = np.asarray(model.apply(variables, preprocessing.preprocess(RGB, preset)))
    folded, residual = preprocessing.fold_preprocessing(variables, preset)
    assert residual.channel_order == "RGB" and residual.value_range == (0.0, 1.0)
    assert residual.std == (1.0, 1.0, 1.0)
    got = np.asarray(model.apply(folded, preprocessing.preprocess(RGB, residual)))
    assert relative(got, expected) < 1e-5


def test_mean_does_not_fold_exactly_because_of_zero_padding(tiny):
    """Folded into the bias, the mean is exact inside but wrong on conv1_1's one-pixel border."""
    model, variables = tiny
    expected = model.apply(variables, preprocessing.preprocess(RGB, "caffe"), features=("conv1_1",))
    folded, residual = preprocessing.fold_preprocessing(variables, "caffe", mean=True)
    assert residual.mean == (0.0, 0.0, 0.0)
    got = model.apply(folded, preprocessing.preprocess(RGB, residual), features=("conv1_1",))
    expected, got = np.asarray(expected["conv1_1"]), np.asarray(got["conv1_1"])
    assert relative(got[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1]) < 1e-5
    border = np.abs(got - expected)
    border[:, 1:-1, 1:-1] = 0
    assert border.max() > 1e-2 * np.abs(expected).max()


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="torchvision, caffe, lpips, vgg16_features"):
        preprocessing.preprocess(RGB, "imagenet")
