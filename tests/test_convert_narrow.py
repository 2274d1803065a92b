"""The converter at a narrow net's sizes: torchvision's modules with fewer channels and units.

A torchvision VGG whose `features` come from torchvision's own `make_layers` at vgg-flax's
`width` and whose classifier Linears have `head_width` units (seeded weights) converts with its
architecture and widths read from its tensors, gives torchvision's logits, records its widths,
and converts back bit for bit into a net that loads it strictly. A tensor of another width is
refused by name. (Full-width shapes: tests/test_convert.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vgg_flax
from vgg_flax.formats.torchvision import from_torchvision, infer_arch, to_torchvision
from vgg_flax.parity.torchvision import torch_model


@pytest.mark.parametrize(
    ("arch", "width", "head_width"), [("vgg11", 0.0625, 16), ("vgg13_bn", 0.1, 24)]
)
def test_a_narrow_torchvision_net_converts_both_ways(arch, width, head_width, tmp_path):
    net = torch_model(arch, width=width, head_width=head_width)
    state = net.state_dict()
    assert infer_arch(state) == arch
    torch.save(state, tmp_path / "narrow.pth")
    model, variables, usage = vgg_flax.load(tmp_path / "narrow.pth")
    assert model.head_width == head_width and usage.architecture["head_width"] == head_width
    assert round(64 * model.width) == net.features[0].out_channels  # conv1_1's channels
    images = np.random.default_rng(0).normal(size=(2, 3, 40, 40)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(images)).numpy()
    found = np.asarray(model.apply(variables, images.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    back = to_torchvision(variables, arch, num_batches_tracked=0)  # so that strict loads it
    again = torch_model(arch, width=width, head_width=head_width, seed=1)
    again.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(again.state_dict()[key], value), key


def test_a_tensor_of_another_width_is_refused_by_name():
    state = {
        k: v.numpy()
        for k, v in torch_model("vgg11", width=0.0625, head_width=16).state_dict().items()
    }
    state["features.3.weight"] = np.zeros((9, 4, 3, 3), np.float32)  # conv2_1: 8 channels
    with pytest.raises(ValueError, match=r"features\.3\.weight: \(9, 4, 3, 3\) != \(8, 4, 3, 3\)"):
        from_torchvision(state, "vgg11")
