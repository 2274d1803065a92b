"""Keras HDF5 import: keras.applications' VGG16/VGG19 in the three layouts against Keras itself.

Keras builds each network once per module with seeded random weights (and random biases); the
test writes the legacy (released files) and Keras 2 layouts with h5py, checks that Keras reads
them back, and Keras 3's `.weights.h5` comes from `save_weights`. vgg-flax must give Keras's own
outputs on the same BGR inputs to 1e-5 relative: one 224x224 image with the top (the size its
fc1 takes), two 96x64 images without it (any size from 32 fits the trunk; pool5 is 3x2).

VGG16 is read in all three layouts without its top, and with it in the legacy and Keras 3
layouts: the two readers (a Keras 2 file is read as a legacy one, through the weight names each
layer lists, the Dense layers' as the convolutions'). VGG19 is read without its top in the legacy
layout only (the released files'): how a layout names a layer's weights is the same for all 16
or 19 layers, and the top is the same three layers in both, so VGG16 proves the layouts and the
top, and VGG19 what it adds (the fourth conv of blocks 3-5 and config E inferred from the file),
without writing and reading 1.7 GB more.
"""

import dataclasses
import functools
import hashlib
import http.server
import inspect
import re
import threading

import h5py
import jax
import numpy as np
import pytest

import vgg_flax
from vgg_flax import preprocessing
from vgg_flax.cli import main
from vgg_flax.formats.keras import from_keras
from vgg_flax.parity import keras as keras_parity
from vgg_flax.weights import registry as weights

keras = keras_parity.import_keras()
# Keras's own variables trip numpy 2's __array__(copy=) deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LAYOUTS = ("legacy", "keras2", "keras3")
TOP_LAYOUTS = ("legacy", "keras3")  # see the module docstring
VGG19_LAYOUTS = ("legacy",)  # see the module docstring
TOLERANCE = 1e-5
NOTOP_SIZE = (96, 64)  # (height, width) of the images without the top


def write_legacy(path, model, chunks=1):
    """The released files' layout: `<layer>/<layer>_W_1:0`, names listed in root attributes."""
    with h5py.File(path, "w") as file:
        names = np.array([layer.name.encode() for layer in model.layers])
        if chunks == 1:
            file.attrs["layer_names"] = names
        else:  # as Keras splits an attribute over HDF5's 64 KB object header limit
            for index, part in enumerate(np.array_split(names, chunks)):
                file.attrs[f"layer_names{index}"] = part
        for layer in model.layers:
            group = file.create_group(layer.name)
            values = layer.get_weights()
            wanted = [f"{layer.name}_{s}_1:0".encode() for s in "Wb"][: len(values)]
            group.attrs["weight_names"] = np.array(wanted, dtype="S") if wanted else np.array([])
            for name, value in zip(wanted, values, strict=True):
                group.create_dataset(name.decode(), data=value)


def write_keras2(path, model):
    """Keras 2's `save_weights` layout: datasets `<layer>/<layer>/kernel:0`, layers sorted."""
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = np.array([layer.name.encode() for layer in model.layers])
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.13.1"
        for layer in sorted(model.layers, key=lambda layer: layer.name):
            group = file.create_group(layer.name)
            values = layer.get_weights()
            wanted = [f"{layer.name}/{s}:0".encode() for s in ("kernel", "bias")][: len(values)]
            group.attrs["weight_names"] = np.array(wanted, dtype="S") if wanted else np.array([])
            for name, value in zip(wanted, values, strict=True):
                group.create_dataset(name.decode(), data=value)


def write(layout, path, model):
    """Save `model`'s weights in `layout`; Keras must read the file back to the same weights."""
    if layout == "legacy":
        write_legacy(path, model)
    elif layout == "keras2":
        write_keras2(path, model)
    else:
        model.save_weights(path)
    saved = model.get_weights()
    model.load_weights(path)  # Keras itself accepts the file ...
    for index, (before, after) in enumerate(zip(saved, model.get_weights(), strict=True)):
        # ... and reads the same numbers (np.array_equal: assert_array_equal's report costs
        # seconds on fc1's 100M weights)
        assert before.shape == after.shape and np.array_equal(before, after), index
    return path


def suffix(layout):
    return ".weights.h5" if layout == "keras3" else ".h5"


class Net:
    """One Keras network, its files in every layout and its outputs on BGR inputs."""

    def __init__(self, tmp, network, include_top, size, batch, layouts=LAYOUTS):
        shape = (*size, 3) if include_top else None
        self.model = keras_parity.keras_model(network, include_top=include_top, input_shape=shape)
        rgb = np.random.default_rng(1).random((batch, *size, 3), np.float32)
        self.rgb = rgb
        self.images = preprocessing.preprocess(rgb, "caffe")
        self.outputs = keras.ops.convert_to_numpy(self.model(self.images))
        self.files = {
            layout: write(
                layout, tmp / f"{network}_{include_top}_{layout}{suffix(layout)}", self.model
            )
            for layout in layouts
        }


@pytest.fixture(scope="module")
def vgg16_top(tmp_path_factory):
    return Net(tmp_path_factory.mktemp("vgg16_top"), "vgg16", True, (224, 224), 1, TOP_LAYOUTS)


@pytest.fixture(scope="module")
def vgg16_notop(tmp_path_factory):
    return Net(tmp_path_factory.mktemp("vgg16_notop"), "vgg16", False, NOTOP_SIZE, 2)


@pytest.fixture(scope="module")
def vgg19_notop(tmp_path_factory):
    return Net(tmp_path_factory.mktemp("vgg19_notop"), "vgg19", False, NOTOP_SIZE, 1, VGG19_LAYOUTS)


def relative(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def run(model, variables, images, feature=None):
    return np.asarray(_apply(model, variables, images, feature))


# Jitted with the model static: the equal models loaded from each layout share one compile,
# where running op by op costs more than compiling.
@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, variables, images, feature):
    if feature is None:
        return model.apply(variables, images)
    return model.apply(variables, images, features=(feature,))[feature]


@pytest.mark.parametrize("layout", TOP_LAYOUTS)
def test_vgg16_with_top_gives_keras_logits(vgg16_top, layout):
    model, variables, _ = vgg_flax.load(vgg16_top.files[layout])
    assert (model.arch, model.num_classes) == ("D", 1000)
    assert relative(run(model, variables, vgg16_top.images), vgg16_top.outputs) < TOLERANCE


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vgg16_without_top_gives_keras_pool5(vgg16_notop, layout):
    model, variables, _ = vgg_flax.load(vgg16_notop.files[layout])
    assert model.arch == "D" and "fc6" not in variables["params"]
    pool5 = run(model, variables, vgg16_notop.images, "pool5")
    assert relative(pool5, vgg16_notop.outputs) < TOLERANCE


@pytest.mark.parametrize("layout", VGG19_LAYOUTS)
def test_vgg19_without_top_gives_keras_pool5(vgg19_notop, layout):
    model, variables, _ = vgg_flax.load(vgg19_notop.files[layout])
    assert model.arch == "E"
    pool5 = run(model, variables, vgg19_notop.images, "pool5")
    assert relative(pool5, vgg19_notop.outputs) < TOLERANCE


def test_every_layer_agrees_with_keras(vgg16_top):
    report = keras_parity.compare_keras(
        vgg16_top.model, vgg16_top.images, from_keras(vgg16_top.files["legacy"])
    )
    names = [row.name for row in report.activations]
    assert names[:3] == ["relu1_1", "relu1_2", "pool1"] and names[-3:] == [
        "relu6",
        "relu7",
        "logits",
    ]
    assert report.worst().max_rel < TOLERANCE and report.top1_agreement == 1.0


def test_fc1_rows_are_in_keras_flatten_order(vgg16_top):
    """Keras decides fc1's row order: read as (C, H, W), as Caffe and torch flatten, it fails."""
    model, variables, _ = vgg_flax.load(vgg16_top.files["keras3"])
    fc6 = np.asarray(variables["params"]["fc6"]["kernel"])  # (7, 7, 512, 4096) from (H, W, C) rows
    as_chw = fc6.reshape(512, 7, 7, -1).transpose(1, 2, 0, 3)
    wrong = {
        **variables,
        "params": {
            **variables["params"],
            "fc6": {"kernel": as_chw, "bias": variables["params"]["fc6"]["bias"]},
        },
    }
    theirs = vgg16_top.model.get_layer("fc1")
    probe = keras.Model(vgg16_top.model.inputs[0], theirs.output)
    fc1 = keras.ops.convert_to_numpy(probe(vgg16_top.images))
    assert relative(run(model, variables, vgg16_top.images, "relu6"), fc1) < TOLERANCE
    assert relative(run(model, wrong, vgg16_top.images, "relu6"), fc1) > 1e-2


def test_split_layer_names_attribute(vgg16_notop, tmp_path):
    path = tmp_path / "split.h5"
    write_legacy(path, vgg16_notop.model, chunks=3)
    vgg16_notop.model.load_weights(path)  # Keras reads layer_names0, 1, 2 too
    _, variables, _ = vgg_flax.load(path)
    _, reference, _ = vgg_flax.load(vgg16_notop.files["legacy"])
    for name, layer in reference["params"].items():
        np.testing.assert_array_equal(variables["params"][name]["kernel"], layer["kernel"])


def test_truncated_file_names_the_file(vgg16_notop, tmp_path):
    data = open(vgg16_notop.files["keras2"], "rb").read()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.h5.*truncated"):
        vgg_flax.load(path)


def test_missing_weight_names_file_and_layer(tmp_path, vgg16_notop):
    path = tmp_path / "broken.h5"
    write_legacy(path, vgg16_notop.model)
    with h5py.File(path, "a") as file:
        del file["block3_conv2"]["block3_conv2_W_1:0"]
    with pytest.raises(ValueError, match=r"broken\.h5: layer 'block3_conv2' lacks"):
        vgg_flax.load(path)


def test_foreign_network_names_file_and_layer(tmp_path):
    path = tmp_path / "resnet.h5"
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = np.array([b"conv1_conv"])
        group = file.create_group("conv1_conv")
        group.attrs["weight_names"] = np.array([b"conv1_conv/kernel:0", b"conv1_conv/bias:0"])
        group["conv1_conv/kernel:0"] = np.zeros((7, 7, 3, 64), np.float32)
        group["conv1_conv/bias:0"] = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match=r"resnet\.h5: layer 'conv1_conv' is not a layer"):
        vgg_flax.load(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as file:
        file["data"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"other\.h5: no 'layer_names'"):
        vgg_flax.load(other)


def test_convert_records_caffe_preprocessing(vgg16_notop, tmp_path):
    from vgg_flax.weights import checkpoint

    out = tmp_path / "ckpt"
    assert main(["convert", str(vgg16_notop.files["keras3"]), str(out)]) == 0
    variables, metadata = checkpoint.read_model(out)
    assert metadata["usage"]["preprocessing"]["name"] == "caffe" and metadata["arch"] == "D"
    model, loaded, _ = vgg_flax.load(out)
    pool5 = run(model, loaded, vgg16_notop.images, "pool5")
    assert relative(pool5, vgg16_notop.outputs) < TOLERANCE


def test_parity_command_against_keras(vgg16_notop, capsys):
    path = str(vgg16_notop.files["legacy"])
    assert main(["parity", "vgg16", "--keras", path, "--size", "64", "96"]) == 0
    out = capsys.readouterr().out
    assert "relu1_1" in out and "pool5" in out


def test_registry_carries_keras_published_md5s():
    """The checksums are keras.applications' own, read from the installed keras source."""
    from keras.src.applications import vgg16, vgg19

    for depth, source in ((16, vgg16), (19, vgg19)):
        published = re.findall(r'file_hash="([0-9a-f]{32})"', inspect.getsource(source))
        entries = [weights.KERAS_WEIGHTS[f"vgg{depth}_caffe{s}"] for s in ("", "_notop")]
        assert [entry.source.md5 for entry in entries] == published
        urls = [source.WEIGHTS_PATH, source.WEIGHTS_PATH_NO_TOP]
        assert [entry.source.url for entry in entries] == urls
        assert all(entry.preprocessing.name == "caffe" for entry in entries)


def test_pretrained_vgg16_caffe_checks_md5(vgg16_notop, tmp_path, monkeypatch):
    # The _notop file (59 MB, not 553): the download, its MD5 and the loading are the same code.
    served = tmp_path / "served"
    served.mkdir()
    entry = weights.KERAS_WEIGHTS["vgg16_caffe_notop"]
    data = open(vgg16_notop.files["legacy"], "rb").read()
    (served / entry.source.file).write_bytes(data)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    cache = tmp_path / "cache"
    try:
        with pytest.raises(ValueError, match="MD5"):  # the published MD5 is the real file's
            vgg_flax.pretrained("vgg16_caffe_notop", base_url=url, cache=cache, progress=False)
        assert not any(cache.iterdir())
        md5 = hashlib.md5(data).hexdigest()
        monkeypatch.setitem(
            weights.KERAS_WEIGHTS,
            "vgg16_caffe_notop",
            dataclasses.replace(entry, source=dataclasses.replace(entry.source, md5=md5)),
        )
        model, variables, _ = vgg_flax.pretrained(
            "vgg16_caffe_notop", base_url=url, cache=cache, progress=False
        )
    finally:
        server.shutdown()
    assert model.arch == "D" and "fc6" not in variables["params"]
    pool5 = run(model, variables, vgg16_notop.images, "pool5")
    assert relative(pool5, vgg16_notop.outputs) < TOLERANCE


def test_a_keras_trunk_gets_caffe_preprocessing_in_losses_and_lpips(vgg16_notop):
    """A trunk passed by path is fed as its usage record says: Keras's own preprocess_input."""
    from vgg_flax.perceptual.losses import perceptual_loss
    from vgg_flax.perceptual.lpips import load_lpips

    path = str(vgg16_notop.files["keras3"])
    loss = perceptual_loss(trunk=path, content_layers={"pool5": 1.0})
    assert loss.preprocessing == preprocessing.PRESETS["caffe"]
    theirs = keras.applications.vgg16.preprocess_input(vgg16_notop.rgb * 255.0)
    expected = keras.ops.convert_to_numpy(vgg16_notop.model(theirs))
    ours = loss.features(vgg16_notop.rgb, ["pool5"])["pool5"]
    assert relative(ours, expected) < TOLERANCE
    metric = load_lpips("0.1", trunk=path)
    assert metric.preprocessing == preprocessing.PRESETS["caffe"]
    x = 2 * vgg16_notop.rgb - 1  # LPIPS takes [-1, 1]
    fed = preprocessing.preprocess(x, metric.preprocessing, input_range=(-1.0, 1.0))
    want = keras.applications.vgg16.preprocess_input((x + 1) * 127.5)
    np.testing.assert_allclose(fed, want, atol=1e-3)
