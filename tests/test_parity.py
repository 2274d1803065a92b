"""vgg-flax computes torchvision's function: all eight archs, every layer, gradients, train-mode BN.

vgg11 and vgg11_bn run at full width at 224x224 (through the converter); the deeper archs, the
256x320 inputs and the gradient and BatchNorm-training checks run on narrow nets (NARROW); the
CLI's gradient test at full width. torch runs single-threaded (the `one_torch_thread`
fixture): it is the reference, and the test workers already use every core. torchvision's
modules get seeded random weights with non-trivial biases and BatchNorm statistics
(`parity.randomize`).
Activations and logits:
max|diff| <= 1e-5 * max|torch value|, per layer.
Gradients: for each parameter, max|diff| <= 1e-4 * max|torch gradient| of that parameter (at
least 1e-3 of the net's largest gradient: `parity.with_floor`), computed in float64 on both
sides (in float32, max-pool near-ties route gradients differently on the two sides; see
`vgg_flax.parity.torchvision.compare`).
"""

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from vgg_flax.cli import main
from vgg_flax.formats.torchvision import torchvision_entries
from vgg_flax.models.arch import TORCHVISION_ARCHS, activation_names
from vgg_flax.parity.torchvision import (
    compare,
    difference,
    flax_layout,
    layout_differences,
    store_linear_transposed,
    torch_layout,
    torch_model,
)

ACTIVATION_TOL = 1e-5
GRADIENT_TOL = 1e-4
# Every arch at 224x224: each arch's layer list and torchvision's numbering of its layers.
# vgg11 and vgg11_bn (every layer kind) at full width through the converter, the deeper archs
# narrow (`NARROW`: the same modules and numbering with a quarter of the channels; their
# full-width shapes are the converter's tests'). 256x320 (pool5 is 8x10, so the adaptive pool
# resamples) for vgg11 and vgg11_bn, narrow: the resampling acts on pool5, the same code after
# any number of convs of any width (the full-width layers are the 224x224 cases'). Each arch's
# cases run together (`_net`).
FULL_WIDTH = ("vgg11", "vgg11_bn")
NARROW = {"width": 0.25, "head_width": 64}
CASES = [
    (arch, size)
    for arch in TORCHVISION_ARCHS
    for size in [(224, 224), *([(256, 320)] if arch in FULL_WIDTH else [])]
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=2)  # tests run arch by arch: each net is built once
def _net(arch):
    return torch_model(arch, seed=0, **({} if arch in FULL_WIDTH else NARROW))


@functools.cache  # the gradient, BatchNorm-training and 256x320 tests share vgg11(_bn)'s
def _narrow_net(arch):
    return torch_model(arch, seed=0, **NARROW)


def _inputs(batch, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=generator).numpy()


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
def test_gradients_match_torchvision_on_narrow_nets(arch):
    # Narrow nets: every layer kind's gradient, BatchNorm's in
    # evaluation mode; the full-width gradient is the CLI test's below (BatchNorm training).
    net = _narrow_net(arch)
    report = compare(arch, net, _inputs(2, 64, 64, seed=1), grad=True, seed=1)
    net_params = [key for key, _ in net.named_parameters()]
    assert [d.name for d in report.gradients] == net_params
    bad = [d for d in report.gradients if d.max_rel > GRADIENT_TOL]
    assert not bad, bad


def test_parity_cli_train_bn_gradients_exit_0_and_misuse_is_an_error(capsys):
    # The one full-width gradient parity: every parameter of vgg11_bn in float64, BatchNorm in
    # training mode (exit 0 means each is within the CLI's tolerance). Conv biases before
    # BatchNorm have gradient zero by construction: rounding noise on both sides, measured
    # against the floor (a fraction of the largest gradient), not relatively.
    args = ["parity", "vgg11_bn", "--grad", "--train-bn", "--size", "64", "64", "--batch", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "\nfeatures.0.bias " in out and "gradient (float64)" in out
    assert "classifier.0.weight " in out  # fc6's 25088 x 4096 weight: full width
    assert main(["parity", "vgg11", "--train-bn", "--size", "64", "64"]) == 2
    assert "vgg11 has no BatchNorm" in capsys.readouterr().err


def test_train_mode_batchnorm_matches_torchvision():
    net = _narrow_net("vgg11_bn")  # full width: the CLI gradient test's
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = compare("vgg11_bn", net, _inputs(2, 64, 96, seed=2), train_bn=True)
    assert len(report.running_stats) == 2 * 8  # mean and var of each of the 8 BatchNorms
    for kind in ("activations", "running_stats"):
        worst = report.worst(kind)
        assert worst.max_rel <= ACTIVATION_TOL * 10, worst  # batch statistics: 1e-4
    for key, value in net.state_dict().items():  # compare() restores the torch net's stats
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(("arch", "size"), CASES, ids=[f"{a}-{h}x{w}" for a, (h, w) in CASES])
def test_every_layer_matches_torchvision(arch, size):
    net = _net(arch) if size == (224, 224) else _narrow_net(arch)
    report = compare(arch, net, _inputs(1, *size))
    names = [d.name for d in report.activations]
    config, batch_norm = TORCHVISION_ARCHS[arch]
    expected = [n for n in activation_names(config, batch_norm) if n != "fc8"]
    assert names == expected  # every conv, bn, relu, pool, fc6, relu6, fc7, relu7 and logits
    bad = [d for d in report.activations if d.max_rel > ACTIVATION_TOL]
    assert not bad, bad
    assert report.top1_agreement == 1.0


def test_parity_cli_with_images_and_weights_file(tmp_path, capsys):
    # A vgg11 state dict whose tensors repeat random rows, stored in full (the reader refuses
    # stride-0 views that would expand far beyond the file's stored bytes).
    torch.manual_seed(0)
    state = {
        e.key: torch.randn(e.shape[-1]).expand(e.shape).contiguous()
        for e in torchvision_entries("vgg11")
    }
    torch.save(state, tmp_path / "vgg11.pth")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (300, 260)), ("b.jpg", (240, 320))):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert (
        main(["parity", "vgg11", "--images", str(tmp_path), "--pth", str(tmp_path / "vgg11.pth")])
        == 0
    )
    out = capsys.readouterr().out
    assert "inputs (2, 3, 224, 224)" in out
    for row in ("conv5_2", "pool5", "fc6", "fc7", "logits"):
        assert f"\n{row} " in out, row
    assert "top-1 agreement: 100.0%" in out
    assert main(["parity", "vgg11", "--images", str(tmp_path / "missing")]) == 2


def test_layout_differences_find_a_change_in_any_memory_order():
    # A narrow head (fc6/fc7 of 16 units): flax_layout, torch_layout and the comparison by
    # views (Linear weights stored (in, out)-major, as the training parity keeps them) agree.
    net = torch_model("vgg11", seed=3, head_width=16)
    variables = flax_layout(net.state_dict(), "vgg11")
    variables["params"]["fc6"]["kernel"][2, 5, 100, 7] += 0.5
    variables["params"]["conv2_1"]["kernel"][1, 0, 30, 4] -= 0.25
    expected = {"classifier.0.weight": 0.5, "features.3.weight": 0.25}
    mapped = dict(torch_layout(variables, "vgg11"))
    for transposed in (False, True):
        if transposed:
            store_linear_transposed(net)
            assert not net.classifier[0].weight.is_contiguous()
        theirs = {key: value.detach().numpy() for key, value in net.state_dict().items()}
        found = layout_differences(variables, "vgg11", theirs)
        assert [d.name for d in found] == list(theirs)
        assert {d.name: d.max_abs for d in found if d.max_abs} == pytest.approx(expected)
        assert [d.max_abs for d in found] == [
            difference(key, mapped[key], theirs[key]).max_abs for key in theirs
        ]
