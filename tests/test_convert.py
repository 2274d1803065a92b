"""torchvision <-> vgg-flax conversion, checked against real torchvision modules and files."""

import functools
import warnings

import numpy as np
import pytest
import torch
import torchvision

import vgg_flax
from vgg_flax.cli import main
from vgg_flax.formats.torchvision import UnusableHeadWarning, torchvision_entries
from vgg_flax.parity.torchvision import randomize
from vgg_flax.preprocessing import PRESETS
from vgg_flax.weights.loading import read_usage


@functools.lru_cache(maxsize=1)
def _vgg11_bn_state() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    net = torchvision.models.vgg11_bn()
    randomize(net, seed=0)
    return {key: value.numpy() for key, value in net.state_dict().items()}


@functools.lru_cache(maxsize=1)
def _vgg11_bn_variables() -> dict:
    """`from_torchvision` of `_vgg11_bn_state()`, made once: the tests only read it."""
    return vgg_flax.from_torchvision(_vgg11_bn_state(), "vgg11_bn")


def _same_bits(a, b) -> bool:
    """Equal dtypes, shapes and bytes: bit for bit (== would take -0.0 for 0.0).

    np.testing.assert_array_equal takes seconds over a full-size state dict; this takes a
    fraction of one."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    same_kind = a.dtype == b.dtype and a.shape == b.shape
    return same_kind and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def _zeros(arch: str) -> dict[str, np.ndarray]:
    # np.zeros maps untouched pages lazily: full-size state dicts that cost no memory or time.
    return {e.key: np.zeros(e.shape, np.float32) for e in torchvision_entries(arch)}


def test_round_trip_is_bit_exact_and_loads_strictly(tmp_path):
    state = _vgg11_bn_state()
    variables = _vgg11_bn_variables()
    assert variables["params"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    assert variables["params"]["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
    back = vgg_flax.to_torchvision(variables, "vgg11_bn", num_batches_tracked=0)
    assert list(back) == list(state)
    for key, value in state.items():
        assert _same_bits(back[key], value), key
    path = tmp_path / "exported.pth"
    # What to_torchvision gives without num_batches_tracked (the CLI test checks that default).
    vgg_flax.save_pth({k: v for k, v in back.items() if "num_batches" not in k}, path)
    with torch.device("meta"):  # skip the random initialisation: every tensor gets assigned
        net = torchvision.models.vgg11_bn()
    net.load_state_dict(torch.load(path, weights_only=True), strict=True, assign=True)
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert _same_bits(value.numpy(), state[key]), key


def test_fc6_follows_torch_flatten_order():
    state = _zeros("vgg11")
    weight = np.zeros((4096, 512 * 49), np.float32)
    weight[5, 2 * 49 + 3 * 7 + 4] = 1.0  # output 5 reads channel 2 at row 3, column 4
    state["classifier.0.weight"] = weight
    kernel = vgg_flax.from_torchvision(state, "vgg11")["params"]["fc6"]["kernel"]
    assert kernel[3, 4, 2, 5] == 1.0 and kernel.sum() == 1.0


def test_prefix_and_old_classifier_numbering():
    state = _vgg11_bn_state()
    old = {}
    for key, value in state.items():
        for new_index, old_index in (
            ("classifier.0.", "classifier.1."),
            ("classifier.3.", "classifier.4."),
        ):
            key = key.replace(new_index, old_index)
        old[f"module.{key}"] = value
    expected = _vgg11_bn_variables()
    got = vgg_flax.from_torchvision(old, "vgg11_bn")
    for path, value in _leaves(expected):
        assert _same_bits(_get(got, path), value), "/".join(path)


def test_accepts_torch_tensors_and_keeps_dtype():
    state = {key: torch.from_numpy(value).half() for key, value in _vgg11_bn_state().items()}
    variables = vgg_flax.from_torchvision(state, "vgg11_bn")
    assert variables["params"]["fc7"]["kernel"].dtype == np.float16
    back = vgg_flax.to_torchvision(variables, "vgg11_bn")
    assert _same_bits(back["classifier.3.weight"], state["classifier.3.weight"].numpy())


def test_wrong_arch_is_named_with_every_problem():
    with pytest.raises(ValueError) as info:
        vgg_flax.from_torchvision(_zeros("vgg16"), "vgg19")
    message = str(info.value)
    assert "look like vgg16, not vgg19" in message
    assert "features.34.weight" in message  # vgg19's last conv, missing from vgg16
    assert "features.19.weight: (512, 512, 3, 3) != (512, 256, 3, 3)" in message
    state = _zeros("vgg11")
    state["features.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    state["extra.weight"] = np.zeros(1, np.float32)
    del state["classifier.6.bias"]
    with pytest.raises(ValueError, match=r"classifier\.6\.bias.*extra\.weight.*\(64, 3, 5, 5\)"):
        vgg_flax.from_torchvision(state, "vgg11")
    with pytest.raises(ValueError, match="unknown torchvision arch 'vgg12'"):
        vgg_flax.from_torchvision(state, "vgg12")


def test_features_only_file_with_nan_head():
    state = _zeros("vgg16")  # like vgg16_features-amdegroot-88682ab5.pth: NaN classifier
    state["features.0.bias"] = np.arange(64, dtype=np.float32)
    state["classifier.0.weight"][0, 0] = np.nan
    with pytest.warns(UnusableHeadWarning, match="head is unusable"):
        variables = vgg_flax.from_torchvision(state, "vgg16")
    assert "fc6" not in variables["params"] and "conv5_3" in variables["params"]
    np.testing.assert_array_equal(variables["params"]["conv1_1"]["bias"], np.arange(64))
    model = vgg_flax.create_model("vgg16")
    pool5 = model.apply(variables, np.ones((1, 32, 32, 3), np.float32), features=("pool5",))
    assert pool5["pool5"].shape == (1, 1, 1, 512)
    with pytest.raises(ValueError, match="head='drop'"):
        vgg_flax.from_torchvision(state, "vgg16", head="keep")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "fc8" not in vgg_flax.from_torchvision(state, "vgg16", head="drop")["params"]
    with pytest.raises(ValueError, match="no fc8"):
        vgg_flax.to_torchvision(variables, "vgg16")


def test_convert_cli_writes_a_checkpoint_that_loads(tmp_path, capsys):
    state = _vgg11_bn_state()
    pth = tmp_path / "vgg11_bn.pth"
    torch.save({key: torch.from_numpy(value) for key, value in state.items()}, pth)
    out = tmp_path / "ckpt"
    assert main(["convert", "vgg11_bn", str(pth), str(out)]) == 0
    assert "wrote vgg11_bn" in capsys.readouterr().out
    model, variables, usage = vgg_flax.load(out)
    assert (model.arch, model.batch_norm, model.num_classes) == ("A", True, 1000)
    assert usage == read_usage(out)  # the record, as read without the arrays
    assert usage.input_size == 224 and usage.preprocessing == PRESETS["torchvision"]
    assert usage.eval_scale == 256 and usage.source.file == "vgg11_bn.pth"
    names = torchvision.models.VGG11_BN_Weights.DEFAULT.meta["categories"]
    assert list(usage.class_names) == names
    back = vgg_flax.to_torchvision(variables, "vgg11_bn")  # no num_batches_tracked by default
    assert list(back) == [key for key in state if "num_batches" not in key]
    for key, value in back.items():
        assert _same_bits(value, state[key]), key
    assert main(["convert", "vgg11_bn", str(pth), str(out)]) == 2  # exists: refused, kept
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a vgg-flax checkpoint"):
        vgg_flax.load(tmp_path)


def _leaves(tree, path=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), value


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree
