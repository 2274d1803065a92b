"""safetensors: vgg-flax's reader and writer against the `safetensors` package, hostile files,
the three layouts, weights folders (save/load, `vgg-flax convert --to safetensors`)."""

import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import vgg_flax
from vgg_flax.cli import main
from vgg_flax.formats.safetensors import (
    MAX_HEADER_BYTES,
    SafetensorsError,
    read_safetensors,
    write_safetensors,
)
from vgg_flax.weights import folder

NARROW = dict(width=0.125, head_width=32, num_classes=5)


def test_reads_the_reference_writer(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.random((3, 4), np.float32),
        "b": rng.integers(-5, 5, (2, 2, 2)).astype(np.int64),
        "c": np.float16([1.5, -2]),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(3.25, np.float64),
    }
    path = str(tmp_path / "x.safetensors")
    safetensors.numpy.save_file(tensors, path, metadata={"format": "np"})
    bf16 = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3) / 3
    safetensors.torch.save_file({"bf16": bf16}, str(tmp_path / "bf.safetensors"))
    for mmap_file in (True, False):
        found, metadata = read_safetensors(path, mmap_file=mmap_file)
        assert metadata == {"format": "np"} and set(found) == set(tensors)
        for name, value in tensors.items():
            assert found[name].dtype == value.dtype and np.array_equal(found[name], value)
    found, _ = read_safetensors(tmp_path / "bf.safetensors")
    assert np.array_equal(found["bf16"].astype(np.float32), bf16.float().numpy())


def test_the_reference_reader_reads_ours(tmp_path):
    tensors = {"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "i": np.int8([1, -1])}
    path = str(tmp_path / "ours.safetensors")
    write_safetensors(path, tensors, {"k": "v"})
    loaded = safetensors.numpy.load_file(path)
    assert all(np.array_equal(loaded[name], value) for name, value in tensors.items())
    with safetensors.safe_open(path, "np") as file:
        assert file.metadata() == {"k": "v"}


def _file(path, header, data=b"", length=None):
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return str(path)


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


HOSTILE = {
    "header length past the file": (dict(header={}, length=1 << 40), "runs past the end"),
    "overlapping offsets": (
        dict(header={"a": _entry(), "b": _entry(offsets=(4, 12))}, data=bytes(16)),
        "overlaps",
    ),
    "offsets out of range": (dict(header={"a": _entry(offsets=(0, 8))}, data=bytes(4)), "past"),
    "dtype not matching the bytes": (
        dict(header={"a": _entry(dtype="F64", offsets=(0, 8))}, data=bytes(8)),
        "is 16 bytes, but its data_offsets span 8",
    ),
    "shape not matching the bytes": (
        dict(header={"a": _entry(shape=(3,), offsets=(0, 8))}, data=bytes(8)),
        "is 12 bytes",
    ),
    "unknown dtype": (dict(header={"a": _entry(dtype="Q7")}, data=bytes(8)), "has dtype 'Q7'"),
    "a gap": (dict(header={"a": _entry(offsets=(4, 12))}, data=bytes(12)), "leaves a gap"),
    "trailing bytes": (dict(header={"a": _entry()}, data=bytes(12)), "belong to none"),
    "keys given twice": (
        dict(header=b'{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"a":{}}'),
        "twice",
    ),
    "not JSON": (dict(header=b"{not json"), "not valid JSON"),
    "deeply nested JSON": (
        dict(header=b"{" + b'"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "not valid JSON",
    ),  # fmt: skip
    "negative shape": (dict(header={"a": _entry(shape=(-2,))}, data=bytes(8)), "non-negative"),
    "metadata not strings": (dict(header={"__metadata__": {"k": 1}}), "strings to strings"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_refused(tmp_path, case):
    spec, message = HOSTILE[case]
    path = _file(tmp_path / "bad.safetensors", **spec)
    with pytest.raises(SafetensorsError, match=message) as error:
        read_safetensors(path)
    assert path in str(error.value)
    if case != "deeply nested JSON":  # the reference reader refuses the same files
        with pytest.raises(Exception):  # noqa: B017 - its error types vary by case
            safetensors.numpy.load_file(path)


def test_a_100_mb_header_is_refused_unread(tmp_path):
    path = str(tmp_path / "huge.safetensors")
    length = 100 * 10**6
    with open(path, "wb") as file:  # sparse: no 100 MB are written
        file.write(struct.pack("<Q", length) + b"{")
        file.truncate(8 + length)
    with pytest.raises(SafetensorsError, match=f"over the reader's budget of {MAX_HEADER_BYTES}"):
        read_safetensors(path)


def test_layouts_from_the_names():
    assert folder.layout_of(["features.0.weight", "classifier.0.weight"]) == "torchvision"
    assert folder.layout_of(["features.0.weight", "pre_logits.fc1.weight"]) == "timm"
    assert folder.layout_of(["module.features.0.bias", "head.fc.weight"]) == "timm"
    assert folder.layout_of(["params/conv1_1/kernel"]) == "vgg-flax"
    with pytest.raises(ValueError, match="none of the layouts"):
        folder.layout_of(["encoder.weight"])


@pytest.fixture(scope="module")
def narrow():
    model = vgg_flax.create_model("B", batch_norm=True, **NARROW)
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    rng = np.random.default_rng(1)  # every weight random, BatchNorm's variances positive
    variables = jax.tree.map(lambda x: 0.5 + rng.random(x.shape, np.float32), shapes)
    images = rng.random((2, 32, 32, 3), np.float32)
    apply = jax.jit(model.apply)
    return model, variables, images, apply, apply(variables, images)


def test_narrow_net_round_trips_as_folder_and_file(narrow, tmp_path):
    model, variables, images, apply, logits = narrow
    usage = vgg_flax.Usage(vgg_flax.architecture(model), class_names=tuple("abcde"))
    path = vgg_flax.save(tmp_path / "w", model, variables, usage, format="safetensors")
    for source in (path, os.path.join(path, "model.safetensors")):  # the file carries its record
        loaded = vgg_flax.load(source)
        assert loaded.usage.class_names == tuple("abcde") and loaded.model == model
        np.testing.assert_array_equal(apply(loaded.variables, images), logits)
    with pytest.raises(ValueError, match="torchvision's VGGs only"):
        vgg_flax.save(tmp_path / "t", model, variables, usage, format="safetensors", layout="timm")
    with pytest.raises(ValueError, match="already exists"):
        vgg_flax.save(path, model, variables, usage, format="safetensors")
    assert sorted(os.listdir(tmp_path)) == ["w"]  # nothing half-written left beside it


def test_loads_without_torch_or_pickle(narrow, tmp_path):
    """vgg_flax.load of a weights folder imports no torch and unpickles nothing (a subprocess:
    this one has torch loaded)."""
    model, variables, *_ = narrow
    path = vgg_flax.save(tmp_path / "w", model, variables, format="safetensors")
    script = (
        "import pickle, sys\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError('something was unpickled')\n"
        "class Refusing(pickle.Unpickler):  # what vgg_flax's .pth reader subclasses\n"
        "    load = refuse\n"
        "pickle.load, pickle.loads, pickle.Unpickler = refuse, refuse, Refusing\n"
        "import numpy as np, vgg_flax\n"
        f"loaded = vgg_flax.load({path!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(repr(float(np.asarray(loaded.variables['params']['fc8']['bias']).sum())))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout) == float(np.asarray(variables["params"]["fc8"]["bias"]).sum())


def test_convert_to_safetensors(narrow, tmp_path, capsys):
    model, variables, images, apply, logits = narrow
    checkpoint = vgg_flax.save(tmp_path / "ckpt", model, variables)
    out = tmp_path / "st"
    assert main(["convert", checkpoint, str(out), "--to", "safetensors"]) == 0
    assert "as a safetensors folder" in capsys.readouterr().out
    loaded = vgg_flax.load(out)
    np.testing.assert_array_equal(apply(loaded.variables, images), logits)
    back = tmp_path / "back"
    assert main(["convert", str(out / "model.safetensors"), str(back)]) == 0  # and to Orbax
    assert vgg_flax.load(back).model == model
