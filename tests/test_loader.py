"""One loader: checkpoints, .pth files and state dicts all come back as (model, variables).

One seeded torchvision vgg11_bn (7 classes) and its .pth file serve the module (`vgg11_bn`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from seeded import model_variables

import vgg_flax
from vgg_flax.parity.torchvision import randomize


@pytest.fixture(scope="module")
def vgg11_bn(tmp_path_factory):
    """(a seeded random torchvision vgg11_bn of 7 classes, its state dict saved as a .pth)."""
    torch.manual_seed(0)
    net = torchvision.models.vgg11_bn(num_classes=7)
    randomize(net, seed=0)
    pth = tmp_path_factory.mktemp("pth") / "weights.pth"  # a name that says nothing of the arch
    torch.save(net.state_dict(), pth)
    return net.eval(), pth


@functools.partial(jax.jit, static_argnums=0)  # equal models (two loads of one file): one compile
def _apply(model, variables, images):
    return model.apply(variables, images)


def test_pth_and_state_dict_load_with_the_architecture_inferred_from_shapes(vgg11_bn):
    net, pth = vgg11_bn
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = net(images).numpy()
    for source in (pth, net.state_dict()):
        model, variables, _ = vgg_flax.load(source)
        assert (model.arch, model.batch_norm, model.num_classes) == ("A", True, 7)
        assert isinstance(variables["params"]["fc8"]["kernel"], jax.Array)
        got = _apply(model, variables, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="do not fit torchvision's vgg13"):
        vgg_flax.load(pth, "vgg13")


def test_unknown_shapes_and_other_files_are_refused_with_the_fix(vgg11_bn, tmp_path):
    state = {k: v for k, v in vgg11_bn[0].state_dict().items() if "features.0." not in k}
    with pytest.raises(ValueError, match="fit none of torchvision's VGGs"):
        vgg_flax.load(state)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ValueError):
        vgg_flax.load(other)
    with pytest.raises(ValueError, match="neither a vgg-flax checkpoint directory"):
        vgg_flax.load(tmp_path / "missing.pth")


def test_save_records_the_whole_architecture_and_options_apply_on_load(tmp_path):
    layers = (8, "M", 16, "M", 16, "1x1-8", "M", 16, "M", 16, "M")
    model = vgg_flax.create_model(
        layers, batch_norm=True, width=0.5, head_width=24, pooling="avg", num_classes=3
    )
    images = np.random.default_rng(0).standard_normal((2, 40, 40, 3), np.float32)
    variables = model_variables(model, seed=1)
    path = vgg_flax.save(tmp_path / "ckpt", model, variables, note="tiny")
    loaded, restored, _ = vgg_flax.load(path, dtype=jnp.bfloat16)
    assert vgg_flax.architecture(loaded) == vgg_flax.architecture(model)
    assert loaded.dtype == jnp.bfloat16 and loaded.pooling == "avg"
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    exact = vgg_flax.load(path)[0]
    np.testing.assert_array_equal(_apply(exact, restored, images), _apply(model, variables, images))


def test_recorded_preprocessing_picks_the_evaluation_normalisation(vgg11_bn, tmp_path):
    from experiments.evaluate import chosen_preprocessing
    from vgg_flax.preprocessing import PRESETS, mean_rgb
    from vgg_flax.weights.loading import read_usage

    model = vgg_flax.create_model("A", width=0.125, head_width=8, num_classes=3)
    variables = model_variables(model, seed=1)
    trained = vgg_flax.save(tmp_path / "a", model, variables, preprocessing="torchvision")
    older = vgg_flax.save(tmp_path / "b", model, variables)  # records nothing: torchvision's
    pth = vgg11_bn[1]
    usages = {name: read_usage(path) for name, path in (("a", trained), ("b", older), ("p", pth))}
    assert all(usage.preprocessing == PRESETS["torchvision"] for usage in usages.values())
    assert chosen_preprocessing([usages["a"]], None) == PRESETS["torchvision"]
    assert chosen_preprocessing([usages["p"], usages["b"]], None) == PRESETS["torchvision"]
    with pytest.warns(UserWarning, match="overrides the preprocessing"):
        assert chosen_preprocessing([usages["a"]], "caffe") == PRESETS["caffe"]
    paper = vgg_flax.save(tmp_path / "m", model, variables, preprocessing=mean_rgb((1, 2, 3)))
    assert read_usage(paper).preprocessing.mean == (1.0, 2.0, 3.0)  # the numbers are recorded
    caffe = vgg_flax.save(tmp_path / "c", model, variables, preprocessing="caffe")
    with pytest.raises(ValueError, match="record different preprocessing"):
        chosen_preprocessing([usages["a"], read_usage(caffe)], None)
