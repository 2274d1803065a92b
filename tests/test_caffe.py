"""Caffe `.caffemodel` import: files written here with protobuf's own encoder, in both layouts.

The reference is a NumPy forward pass as Caffe computes it: NCHW convolutions, and InnerProduct
on the (C, H, W)-flattened pool5; fc6 and the logits must agree to 1e-5.
"""

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import vgg_flax
from vgg_flax import preprocessing
from vgg_flax.models import arch as arch_lib

TOLERANCE = 1e-5
WIDTH, HEAD = 0.125, 32  # a narrow VGG-D, Caffe's layer names: conv1_1 ... fc8
V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "Dropout": 6}


def caffe_messages():
    """NetParameter and its parts, as caffe.proto numbers their fields (only those used)."""
    proto = descriptor_pb2.FileDescriptorProto(name="caffe_test.proto", package="caffe_test")
    T = descriptor_pb2.FieldDescriptorProto
    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED

    def message(name, *fields):
        msg = proto.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                field.type_name = f".caffe_test.{type_name}"
            if label == rep and kind != T.TYPE_MESSAGE:
                field.options.packed = True

    message("BlobShape", ("dim", 1, rep, T.TYPE_INT64, None))
    message(
        "BlobProto",
        ("num", 1, opt, T.TYPE_INT32, None),
        ("channels", 2, opt, T.TYPE_INT32, None),
        ("height", 3, opt, T.TYPE_INT32, None),
        ("width", 4, opt, T.TYPE_INT32, None),
        ("data", 5, rep, T.TYPE_FLOAT, None),
        ("shape", 7, opt, T.TYPE_MESSAGE, "BlobShape"),
    )
    message(
        "LayerParameter",
        ("name", 1, opt, T.TYPE_STRING, None),
        ("type", 2, opt, T.TYPE_STRING, None),
        ("bottom", 3, rep, T.TYPE_STRING, None),
        ("top", 4, rep, T.TYPE_STRING, None),
        ("blobs", 7, rep, T.TYPE_MESSAGE, "BlobProto"),
    )
    message(
        "V1LayerParameter",
        ("bottom", 2, rep, T.TYPE_STRING, None),
        ("top", 3, rep, T.TYPE_STRING, None),
        ("name", 4, opt, T.TYPE_STRING, None),
        ("type", 5, opt, T.TYPE_INT32, None),  # an enum on the wire: a varint
        ("blobs", 6, rep, T.TYPE_MESSAGE, "BlobProto"),
    )
    message(
        "NetParameter",
        ("name", 1, opt, T.TYPE_STRING, None),
        ("layers", 2, rep, T.TYPE_MESSAGE, "V1LayerParameter"),
        ("layer", 100, rep, T.TYPE_MESSAGE, "LayerParameter"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    get = lambda name: message_factory.GetMessageClass(  # noqa: E731
        pool.FindMessageTypeByName(f"caffe_test.{name}")
    )
    return get("NetParameter")


def caffe_weights(rng):
    """Caffe-layout weights of the narrow VGG-D: convs (out, in, kh, kw), fc (out, in)."""
    layers, channels = [], 3
    for layer in arch_lib.layers("D", WIDTH):
        if layer.kind == "conv":
            w = rng.normal(0, np.sqrt(2 / (9 * channels)), (layer.features, channels, 3, 3))
            layers.append(("Convolution", layer.name, w, rng.uniform(-0.1, 0.1, layer.features)))
            layers.append(("ReLU", f"relu{layer.name[4:]}", None, None))
            channels = layer.features
        else:
            layers.append(("Pooling", layer.name, None, None))
    fan_in = channels * 49
    for index, (name, out) in enumerate((("fc6", HEAD), ("fc7", HEAD), ("fc8", 10))):
        w = rng.normal(0, np.sqrt(2 / fan_in), (out, fan_in))
        layers.append(("InnerProduct", name, w, rng.uniform(-0.1, 0.1, out)))
        if index < 2:
            layers += [
                ("ReLU", f"relu{name[2:]}", None, None),
                ("Dropout", f"drop{name[2:]}", None, None),
            ]
        fan_in = out
    return [(t, n, None if w is None else w.astype(np.float32), b) for t, n, w, b in layers]


def encode(layers, layout):
    """A .caffemodel in the V1 `layers` (legacy 4-D blob dims) or the new `layer` layout."""
    net = caffe_messages()(name="VGG_ILSVRC_16_layers")
    for kind, name, weight, bias in layers:
        if layout == "v1":
            layer = net.layers.add(name=name, type=V1_TYPES[kind], bottom=["x"], top=["y"])
        else:
            layer = net.layer.add(name=name, type=kind, bottom=["x"], top=["y"])
        if weight is None:
            continue
        for value in (weight, bias.astype(np.float32)):
            blob = layer.blobs.add()
            blob.data.extend(value.ravel().tolist())
            if layout == "v1":
                dims = (1,) * (4 - value.ndim) + value.shape
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.dim.extend(value.shape)
    return net.SerializeToString()


def caffe_forward(layers, images_nchw):
    """Caffe's forward pass in NumPy (float64): returns fc6 (before its ReLU) and fc8."""
    x, out = images_nchw.astype(np.float64), {}
    for kind, name, weight, bias in layers:
        if kind == "Convolution":
            padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
            windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
            x = np.einsum("nchwij,ocij->nohw", windows, weight) + bias[None, :, None, None]
        elif kind == "ReLU":
            x = np.maximum(x, 0)
        elif kind == "Pooling":
            n, c, h, w = x.shape
            x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        elif kind == "InnerProduct":
            x = x.reshape(len(x), -1) @ weight.T.astype(np.float64) + bias  # (C, H, W) order
            out[name] = x
    return out


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(0)
    layers = caffe_weights(rng)
    rgb = rng.random((2, 224, 224, 3), np.float32)
    images = preprocessing.preprocess(rgb, "caffe")  # BGR, 0-255, minus the mean pixel
    return layers, images, caffe_forward(layers, images.transpose(0, 3, 1, 2))


def relative(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("layout", ("v1", "new"))
def test_caffemodel_matches_caffe_forward(net, layout, tmp_path):
    layers, images, reference = net
    path = tmp_path / f"vgg_{layout}.caffemodel"
    path.write_bytes(encode(layers, layout))
    model, variables, _ = vgg_flax.load(path)
    assert model.num_classes == 10 and model.head_width == HEAD
    found = model.apply(variables, images, features=("fc6", "logits"))
    assert relative(found["fc6"], reference["fc6"]) < TOLERANCE
    assert relative(found["logits"], reference["fc8"]) < TOLERANCE


def test_full_width_layer_list_is_vgg16(tmp_path):
    """Real VGG-16 widths give arch "D" (only the conv shapes are checked, head dropped)."""
    rng = np.random.default_rng(1)
    layers, channels = [], 3
    for layer in arch_lib.layers("D"):
        if layer.kind == "conv":
            w = np.zeros((layer.features, channels, 3, 3), np.float32)
            layers.append(("Convolution", layer.name, w, rng.random(layer.features)))
            channels = layer.features
    path = tmp_path / "features.caffemodel"
    path.write_bytes(encode(layers, "new"))
    model, variables, _ = vgg_flax.load(path)
    assert model.arch == "D" and "fc6" not in variables["params"]


def test_truncated_caffemodel_names_file_and_layer(net, tmp_path):
    data = encode(net[0], "v1")
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(
        ValueError, match=r"cut\.caffemodel: truncated in layer 'fc6' after layer 'pool5'"
    ):
        vgg_flax.load(path)


def test_foreign_files_give_clear_errors(tmp_path):
    text = tmp_path / "deploy.caffemodel"
    text.write_bytes(b'name: "VGG_ILSVRC_16_layers"\nlayers { name: "conv1_1" }\n')
    with pytest.raises(ValueError, match=r"deploy\.caffemodel"):
        vgg_flax.load(text)
    layers = [("BatchNorm", "bn_conv1", np.ones((1, 64), np.float32), np.ones(64))]
    other = tmp_path / "resnet.caffemodel"
    other.write_bytes(encode(layers, "new"))
    with pytest.raises(
        ValueError, match=r"resnet\.caffemodel: layer 'bn_conv1' of type 'BatchNorm'"
    ):
        vgg_flax.load(other)
