"""timm parity: timm's VGG state dicts both ways, checked against timm itself (float32).

For vgg11_bn and vgg16 at full width, with seeded random weights (every bias and BatchNorm
statistic non-trivial), to max|diff| <= 1e-5 * max|timm's value| as in tests/test_parity.py:
logits, `forward_features` (pool5), `forward_head(pre_logits=True)` and the `features_only`
maps, at 224 and at 64x64, where timm's ConvMlp pools pool5's 2x2 map adaptively up to fc1's
7x7 window. Both directions: timm's tensors converted to vgg-flax give timm's outputs, and
vgg-flax's converted back are timm's bit for bit (a strict load), so timm run on converted
vgg-flax weights gives the same outputs too. The weights folder vgg-flax saves loads in timm
(`pretrained_cfg_overlay=dict(file=...)`) and torchvision with equal logits.
"""

import json
import os

import jax
import numpy as np
import pytest
import timm
import torch
import torchvision

import vgg_flax
from vgg_flax.formats.timm import (
    class_names_from_config,
    from_timm,
    is_timm_state,
    preset_from_config,
    timm_to_torchvision,
    to_timm,
    torchvision_to_timm,
)
from vgg_flax.formats.torchvision import torchvision_modules
from vgg_flax.preprocessing import PRESETS, Preset

TOL = 1e-5
SIZES = (224, 64)


def _seeded_timm(arch: str, seed: int = 0) -> torch.nn.Module:
    """timm's `arch` with seeded random weights: He-scaled kernels, random biases and BN stats.

    Built on the meta device and given its tensors directly: initialising 138M parameters the
    usual way costs seconds and draws zero biases, which would hide a bias mapped wrongly.
    """
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in model.state_dict().items():
        shape = meta.shape
        if key.endswith("num_batches_tracked"):
            value = torch.zeros((), dtype=torch.int64)
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith("weight") and len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            value = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif key.endswith("weight"):  # BatchNorm's scale
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:  # biases, running means
            value = 0.1 * torch.randn(shape, generator=generator)
        state[key] = value
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _features_only(model: torch.nn.Module, arch: str) -> torch.nn.Module:
    """timm's `features_only` net of `arch` holding `model`'s very tensors."""
    with torch.device("meta"):
        net = timm.create_model(arch, pretrained=False, features_only=True)
    state = {
        key.replace("features.", "features_", 1): value
        for key, value in model.state_dict().items()
        if key.startswith("features.")
    }
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


class _Reference:
    """One architecture: timm's model, its state dict, and the vgg-flax conversion of it."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self.timm = _seeded_timm(arch)
        self.features_only = _features_only(self.timm, arch)
        self.state = {key: value.numpy() for key, value in self.timm.state_dict().items()}
        self.variables = from_timm(self.state)  # the architecture found from the shapes
        self.model = vgg_flax.create_model(arch)
        # timm's feature_info names its taps by module ("features.2"): vgg-flax's by activation.
        modules = torchvision_modules(arch)
        self.taps = [modules[name] for name in self.features_only.feature_info.module_name()]
        names = (*self.taps, "relu7", "logits")
        self.forward = jax.jit(lambda v, x: self.model.apply(v, x, features=names))
        self.outputs: dict[int, dict[str, np.ndarray]] = {}

    def timm_outputs(self, size: int) -> dict[str, np.ndarray]:
        """timm's logits, forward_features, forward_head(pre_logits=True) and features_only."""
        if size not in self.outputs:
            images = np.random.default_rng(size).random((1, 3, size, size), np.float32)
            with torch.no_grad():
                x = torch.from_numpy(images)
                pooled = self.timm.forward_features(x)
                pre_logits = self.timm.forward_head(pooled, pre_logits=True)
                logits = self.timm.get_classifier()(pre_logits)
                maps = self.features_only(x)
            out = {"images": images, "pool5": pooled, "relu7": pre_logits, "logits": logits}
            out |= {f"features_only/{name}": m for name, m in zip(self.taps, maps, strict=True)}
            self.outputs[size] = {key: np.asarray(value) for key, value in out.items()}
        return self.outputs[size]


@pytest.fixture(scope="module", params=["vgg11_bn", "vgg16"])
def reference(request):
    return _Reference(request.param)


def _assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """The project's parity measure (tests/test_parity.py): max|diff| <= TOL * max|reference|."""
    assert ours.shape == theirs.shape, what
    worst = float(np.max(np.abs(ours - theirs)))
    assert worst <= TOL * float(np.max(np.abs(theirs))), f"{what}: max|diff| {worst}"


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


@pytest.mark.parametrize("size", SIZES)
def test_timm_to_vgg_flax_matches_timm(reference, size):
    expected = reference.timm_outputs(size)
    images = jax.numpy.asarray(_nhwc(expected["images"]))
    found = jax.device_get(reference.forward(reference.variables, images))
    for key, value in expected.items():
        if key == "images":
            continue
        _assert_close(found[key.removeprefix("features_only/")], _nhwc(value), key)
    assert found["logits"].shape == (1, 1000)


def test_vgg_flax_to_timm_is_timm_exactly(reference):
    """vgg-flax -> timm is the exact inverse, so timm on it computes what vgg-flax does."""
    state = to_timm(reference.variables, reference.arch)
    expected = {k: v for k, v in reference.state.items() if not k.endswith("num_batches_tracked")}
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and np.array_equal(state[key], value), key
    missing, unexpected = reference.timm.load_state_dict(
        {key: torch.from_numpy(value) for key, value in state.items()}, strict=False
    )
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)


@pytest.mark.parametrize("reference", ["vgg11_bn"], indirect=True)  # one is enough for a file
def test_saved_folder_loads_in_timm_and_torchvision(reference, tmp_path):
    """vgg_flax.save(format="safetensors"): timm's and torchvision's loaders, equal logits."""
    from safetensors.torch import load_file, save_file

    size = 64
    expected = reference.timm_outputs(size)
    usage = vgg_flax.Usage(vgg_flax.architecture(reference.model))
    folder = vgg_flax.save(
        tmp_path / "vgg11_bn", reference.model, reference.variables, usage, format="safetensors"
    )
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    file = os.path.join(folder, "model.safetensors")
    images = torch.from_numpy(expected["images"])
    net = timm.create_model(
        "vgg11_bn", pretrained=True, pretrained_cfg_overlay=dict(file=file)
    ).eval()
    state = load_file(file)
    with torch.device("meta"):
        tv = torchvision.models.vgg11_bn()
    tv.load_state_dict(state, strict=True, assign=True)
    with torch.no_grad():
        for name, logits in (("timm", net(images)), ("torchvision", tv.eval()(images))):
            _assert_close(logits.numpy(), expected["logits"], name)
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["architecture"] == "vgg11_bn"
    assert preset_from_config(config) == PRESETS["torchvision"]
    # And vgg_flax.load reads the torchvision-layout folder back, bit for bit; and a file of
    # timm's own state dict (its names, as timm's hub repositories hold it), written by the
    # safetensors package.
    timm_file = str(tmp_path / "timm.safetensors")
    save_file({k: v.contiguous() for k, v in reference.timm.state_dict().items()}, timm_file)
    for source in (folder, timm_file):
        loaded = vgg_flax.load(source)
        assert loaded.model == reference.model
        assert loaded.usage.preprocessing == PRESETS["torchvision"]
        for (path, ours), theirs in zip(
            jax.tree_util.tree_leaves_with_path(loaded.variables),
            jax.tree.leaves(reference.variables),
            strict=True,
        ):
            assert np.array_equal(ours, theirs), (source, path)


def test_timm_layout_renames():
    shapes = {
        "features.0.weight": (8, 3, 3, 3),
        "classifier.0.weight": (16, 8 * 49),
        "classifier.3.weight": (16, 16),
        "classifier.6.weight": (10, 16),
        "classifier.6.bias": (10,),
    }
    state = {k: np.arange(np.prod(s), dtype=np.float32).reshape(s) for k, s in shapes.items()}
    theirs = torchvision_to_timm(state)
    assert theirs["pre_logits.fc1.weight"].shape == (16, 8, 7, 7)
    assert theirs["pre_logits.fc2.weight"].shape == (16, 16, 1, 1)
    assert theirs["head.fc.weight"].shape == (10, 16) and is_timm_state(theirs)
    back = timm_to_torchvision({f"module.{k}": v for k, v in theirs.items()})
    assert all(np.array_equal(back[k], v) for k, v in state.items()) and set(back) == set(state)
    assert not is_timm_state(state)


def test_timm_config_to_preset():
    cfg = {"input_size": [3, 288, 288], "crop_pct": 0.95, "interpolation": "bicubic",
           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # fmt: skip
    preset = preset_from_config({"pretrained_cfg": cfg})
    assert preset == Preset(
        "timm", "RGB", (0.0, 1.0), (0.5,) * 3, (0.5,) * 3, resize=303, crop=288,
        interpolation="bicubic",
    )  # fmt: skip
    with pytest.raises(ValueError, match="square inputs"):
        preset_from_config({"input_size": [3, 224, 256]})


def test_timm_config_class_names():
    """label_names where given; ImageNet's for timm's `in1k` tags with 1000 classes; else none."""
    assert class_names_from_config({"label_names": ["cat", "dog"]}) == ("cat", "dog")
    names = class_names_from_config({"pretrained_cfg": {"tag": "tv_in1k", "num_classes": 1000}})
    assert names == tuple(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    for cfg in ({"tag": "tv_in1k", "num_classes": 10}, {"num_classes": 1000}):
        assert class_names_from_config({"pretrained_cfg": cfg}) is None
