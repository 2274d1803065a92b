"""Table 1's layer lists and Table 2's counts, checked against the paper's numbers."""

import jax
import jax.numpy as jnp
import pytest

from vgg_flax import ARCHS, TABLE2_MILLIONS, create_model
from vgg_flax.models import arch

# The paper's exact counts (docs/paper.md, Parameter counts; torchvision's num_params for _bn).
EXACT = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952}
EXACT |= {"D": 138_357_544, "E": 143_667_240}
EXACT_BN = {"A": 132_868_840, "B": 133_053_736, "D": 138_365_992, "E": 143_678_248}
GMACS = {"A": 7.609, "B": 11.308, "C": 11.771, "D": 15.470, "E": 19.632}
WEIGHT_LAYERS = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}


def test_archs_are_table1():
    assert set(ARCHS) == {"A", "A-LRN", "B", "C", "D", "E"}
    for name, depth in WEIGHT_LAYERS.items():
        convs = [x for x in arch.layers(name) if x.kind == "conv"]
        assert len(convs) + 3 == depth
        assert sum(x.kind == "pool" for x in arch.layers(name)) == 5
    one_by_one = [x.name for x in arch.layers("C") if x.kernel == 1]
    assert one_by_one == ["conv3_3", "conv4_3", "conv5_3"]
    assert [x.kind for x in arch.layers("A-LRN")[:3]] == ["conv", "lrn", "pool"]
    assert arch.layers("E")[-2].name == "conv5_4"


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_parameter_counts_round_to_table2(name):
    count = arch.count_params(name)
    assert count == EXACT[name]
    assert round(count / 1e6) == TABLE2_MILLIONS[name]


@pytest.mark.parametrize("name", list(EXACT_BN))
def test_batchnorm_parameter_counts(name):
    assert arch.count_params(name, batch_norm=True) == EXACT_BN[name]


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_built_model_has_the_counted_parameters(name, batch_norm):
    model = create_model(name, batch_norm=batch_norm)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    built = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    assert built == arch.count_params(name, batch_norm)
    if name in EXACT_BN and batch_norm:
        assert built == EXACT_BN[name]
    elif not batch_norm:
        assert built == EXACT[name]


@pytest.mark.parametrize("name", list(GMACS))
def test_multiply_accumulates_at_224(name):
    assert round(arch.count_macs(name) / 1e9, 3) == GMACS[name]


def test_torchvision_names_resolve():
    assert arch.resolve("vgg16_bn") == ("D", True)
    assert arch.resolve("vgg19") == ("E", False)
    assert arch.resolve("a-lrn") == ("A-LRN", False)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown VGG architecture 'vgg17'.*A-LRN.*vgg19_bn"):
        create_model("vgg17")


def test_summary_command_prints_all_twelve(capsys):
    from vgg_flax.cli import main

    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "138,357,544" in out and "143,678,248" in out and "19.632" in out
    assert len([line for line in out.splitlines() if line[:1] in "ABCDE"]) == 12
