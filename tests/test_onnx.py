"""ONNX export (jax2onnx): onnxruntime on the CPU runs the files and gives `model.apply`'s output.

VGG-11 with BatchNorm and VGG-16 (their layer lists, narrow widths: the numerics do not depend
on the width), seeded random weights (`test_export.random_variables`): classify at 224x224 and
at 97x131, and the dense mode at two image sizes from one file, each at batch 1 and 5 from one
file. The reference is `model.apply` with the model's own (CPU) kernels, jitted (one program
per input shape, not one per operation).
"""

import jax
import numpy as np
import onnxruntime as ort
import pytest
from test_export import random_variables
from train_tiny import TINY

import vgg_flax
from vgg_flax.cli import main
from vgg_flax.inference import onnx as vgg_onnx
from vgg_flax.inference.export import to_onnx

RELATIVE = 1e-5  # of the largest |output|


def run_onnx(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [inputs] = session.get_inputs()
    assert inputs.name == vgg_onnx.INPUT_NAME
    return session.run(None, {inputs.name: images})[0]


def assert_matches(found, expected):
    scale = np.abs(expected).max()
    assert scale > 1e-3  # outputs worth comparing
    np.testing.assert_allclose(found, expected, rtol=RELATIVE, atol=RELATIVE * scale)


def jitted_apply(model):
    """`model.apply(variables, images, mode=...)`, jitted."""
    return jax.jit(model.apply, static_argnames=("mode",))


@pytest.fixture(scope="module", params=["vgg11_bn", "vgg16"])
def net(request):
    model = vgg_flax.create_model(request.param, num_classes=10, **TINY)
    return model, random_variables(model), jitted_apply(model)


def images(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, height, width, 3), dtype=np.float32)


@pytest.mark.parametrize("size", [224, (97, 131)])
def test_classify_at_a_fixed_size_any_batch(net, size, tmp_path):
    model, variables, apply = net
    path = tmp_path / "vgg.onnx"
    to_onnx(model, variables, str(path), mode="classify", image_size=size)
    height, width = vgg_onnx.image_hw(size)
    for batch in (1, 5):
        x = images(batch, height, width, seed=batch)
        assert_matches(run_onnx(path, x), np.asarray(apply(variables, x)))
    assert vgg_onnx.read_metadata(path)["vgg_flax.image_size"] == [height, width]


def test_dense_any_size_any_batch_from_one_file(net, tmp_path):
    model, variables, apply = net
    path = tmp_path / "dense.onnx"
    proto = vgg_onnx.to_onnx(model, variables, str(path), mode="dense")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "height", "width", 3]
    for batch, height, width in ((1, 224, 224), (5, 256, 320)):
        x = images(batch, height, width, seed=height)
        expected = np.asarray(apply(variables, x, mode="dense"))
        assert_matches(run_onnx(path, x), expected)


NAMES = ["cat", "dog", "emu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved narrow VGG-A with its preprocessing and class names recorded."""
    model = vgg_flax.create_model("A", num_classes=3, **TINY)
    variables = random_variables(model)
    folder = tmp_path_factory.mktemp("onnx") / "ckpt"
    path = vgg_flax.save(folder, model, variables, preprocessing="caffe", class_names=NAMES)
    return path, model, variables


def test_cli_writes_the_usage_record_into_the_metadata(checkpoint, tmp_path, capsys):
    source, model, variables = checkpoint
    names = NAMES
    out = tmp_path / "map.onnx"
    assert main(["export", source, str(out), "--format", "onnx", "--mode", "dense_map"]) == 0
    assert "mode dense_map, images of any size" in capsys.readouterr().out
    metadata = vgg_onnx.read_metadata(out)
    assert metadata["class_names"] == names and metadata["vgg_flax.mode"] == "dense_map"
    assert metadata["preprocessing"]["name"] == "caffe"
    assert metadata["preprocessing"]["channel_order"] == "BGR"
    assert len(metadata["preprocessing"]["mean"]) == 3
    x = images(2, 256, 224)
    expected = jitted_apply(model)(variables, x, mode="dense_map")
    assert_matches(run_onnx(out, x), np.asarray(expected))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "onnx", "--image-size", "31"], "at least 32x32"),
        (["--format", "onnx", "--image-size", "64x16"], "at least 32x32"),
        (["--format", "onnx", "--mode", "dense", "--image-size", "224"], "drop the image size"),
        (["--format", "onnx", "--quantize", "int8"], "--calibrate DIR"),
        (["--format", "onnx", "--calibrate", "."], "--calibrate needs --quantize"),
        (["--format", "stablehlo", "--image-size", "97x131"], "for --format onnx"),
        (["--format", "stablehlo", "--quantize", "int8"], "--calibrate DIR"),
    ],
)
def test_bad_options_fail_before_any_work(argv, message, checkpoint, tmp_path, monkeypatch, capsys):
    from vgg_flax.weights import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the options were checked")

    monkeypatch.setattr(loading, "load", no_loading)
    assert main(["export", checkpoint[0], str(tmp_path / "out.onnx"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_unwritable_output_fails_before_any_work(checkpoint, tmp_path, monkeypatch, capsys):
    from vgg_flax.weights import loading

    monkeypatch.setattr(loading, "load", lambda *a, **k: pytest.fail("weights were loaded"))
    out = tmp_path / "missing" / "vgg.onnx"
    assert main(["export", checkpoint[0], str(out), "--format", "onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 32x32"):
        vgg_onnx.to_onnx(None, {}, mode="classify", image_size=16)
