"""Usage records: one record per set of weights, written by every checkpoint, read back by `load`.

The fixture tests/data/old_release_a_local/ is a training run's model/ and config.json written
by the previous release (commit 1889877: `python -m experiments.train --config
experiments/configs/a_256.py:local --config.width=0.125 --config.head_width=32
--config.init=torchvision`, so that its outputs depend on its input). Its metadata
says `"preprocessing": "mean_rgb"` without the mean; the run trained on the digits with their
own mean pixel, which only its config.json implies.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import vgg_flax
from vgg_flax.cli import main
from vgg_flax.data.sources import digits_arrays
from vgg_flax.preprocessing import IMAGENET_MEAN_RGB, PRESETS, mean_rgb
from vgg_flax.weights import registry
from vgg_flax.weights import usage as usage_lib
from vgg_flax.weights.loading import read_usage

OLD_RUN = Path(__file__).parent / "data" / "old_release_a_local"


def test_the_old_release_fixture_is_what_it_claims():
    metadata = json.loads((OLD_RUN / "model" / "metadata" / "metadata").read_text())
    assert metadata["preprocessing"] == "mean_rgb" and "usage" not in metadata
    assert "mean_rgb" not in metadata


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    images, labels, _ = digits_arrays(32)["test"]
    path = tmp_path_factory.mktemp("digits") / f"digit_{labels[0]}.png"
    Image.fromarray(images[0]).save(path)
    return path, images[0]


def test_an_old_release_checkpoint_loads_with_its_training_mean():
    model, variables, usage = vgg_flax.load(OLD_RUN / "model")
    assert (model.arch, model.width, model.head_width, model.num_classes) == ("A", 0.125, 32, 10)
    # The digits' own mean pixel, as the old run computed it from the training images.
    train = digits_arrays(32)["train"][0]
    expected = tuple(np.mean(train, axis=(0, 1, 2), dtype=np.float64))
    assert usage.preprocessing.name == "mean_rgb"
    np.testing.assert_allclose(usage.preprocessing.mean, expected, rtol=1e-12)
    assert usage.input_size == 32 and usage.eval_scale == 32 and usage.train_flip is False
    assert usage.class_names == tuple(str(d) for d in range(10))
    assert read_usage(OLD_RUN / "model") == usage


def test_an_old_release_checkpoint_predicts_with_the_right_preprocessing(digit_png, capsys):
    path, pixels = digit_png
    model, variables, usage = vgg_flax.load(OLD_RUN / "model")
    # By hand: RGB 0-255 minus the digits' mean pixel, at the 32x32 the net was trained on.
    train = digits_arrays(32)["train"][0]
    x = pixels.astype(np.float32) - np.mean(train, axis=(0, 1, 2)).astype(np.float32)
    reference = np.asarray(jax.nn.softmax(model.apply(variables, jnp.asarray(x[None]))))[0]
    [prediction] = vgg_flax.predict([path], model, variables, usage, top=10)
    got = np.zeros(10)
    for index, name, probability in prediction.top:
        assert name == str(index)
        got[index] = probability
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-6)
    # ImageNet's mean pixel (what an old "mean_rgb" would give without the run's config) differs.
    imagenet = x + np.mean(train, axis=(0, 1, 2)).astype(np.float32) - np.float32(IMAGENET_MEAN_RGB)
    wrong = np.asarray(jax.nn.softmax(model.apply(variables, jnp.asarray(imagenet[None]))))[0]
    assert np.abs(wrong - reference).max() > 1e-4
    # The command line, with no preprocessing flag, gives the same numbers.
    assert main(["predict", str(path), "--weights", str(OLD_RUN / "model"), "--json"]) == 0
    [printed] = json.loads(capsys.readouterr().out)
    top = printed["top"][0]
    assert top["index"] == int(np.argmax(reference))
    assert top["probability"] == pytest.approx(float(reference.max()), rel=1e-4)


def test_a_mean_rgb_run_records_its_mean_and_predict_uses_it(tmp_path, digit_png, capsys):
    """Today's training runs record the numbers: a run's model/ predicts with no flags."""
    from vgg_flax import data
    from vgg_flax.train.trainer import usage as run_usage

    model = vgg_flax.create_model("A", width=0.125, head_width=8, num_classes=10)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    config = data.default_config(source="digits", normalize="mean_rgb", mean_rgb=(10.0, 20.0, 30))
    record = run_usage(model, config, [str(d) for d in range(10)])
    out = vgg_flax.save(tmp_path / "model", model, variables, record, step=2)
    usage = read_usage(out)
    assert usage.preprocessing == mean_rgb((10, 20, 30), resize=32, crop=32)
    path, pixels = digit_png
    x = pixels.astype(np.float32) - np.float32([10, 20, 30])
    reference = np.asarray(jax.nn.softmax(model.apply(variables, jnp.asarray(x[None]))))[0]
    assert main(["predict", str(path), "--weights", out, "--json", "--top", "1"]) == 0
    [printed] = json.loads(capsys.readouterr().out)
    assert printed["top"][0]["probability"] == pytest.approx(float(reference.max()), rel=1e-4)


def test_records_round_trip_and_old_records_read():
    entry = registry.TORCHVISION_WEIGHTS["vgg16_bn"]
    back = usage_lib.from_metadata(usage_lib.to_metadata(entry, step=3))
    assert back == entry
    assert entry.metrics == {"acc1": 73.360, "acc5": 91.516}
    assert entry.source.sha256 == "6c64b313" and entry.source.size == 553_507_836
    spec = {"arch": "D", "num_classes": 1000}
    caffe = usage_lib.from_metadata({**spec, "preprocessing": "caffe", "input_size": 224})
    assert caffe.preprocessing == PRESETS["caffe"]
    paper = usage_lib.from_metadata({**spec, "preprocessing": "mean_rgb"})
    assert paper.preprocessing.mean == IMAGENET_MEAN_RGB  # no data mean known: ImageNet's
    assert usage_lib.from_metadata(spec).preprocessing == PRESETS["torchvision"]
    with pytest.raises(ValueError, match="unknown preprocessing preset 'imagenet'"):
        usage_lib.from_metadata({**spec, "preprocessing": "imagenet"})
    with pytest.raises(ValueError, match="belong in the usage record"):
        usage_lib.to_metadata(entry, preprocessing="caffe")


def test_registry_entries_are_records_without_a_second_mean():
    for name, entry in {**registry.TORCHVISION_WEIGHTS, **registry.KERAS_WEIGHTS}.items():
        assert isinstance(entry, usage_lib.Usage) and entry.name == name
        assert entry.preprocessing in PRESETS.values()
        assert not hasattr(entry, "mean")
    assert registry.KERAS_WEIGHTS["vgg16_caffe"].preprocessing == PRESETS["caffe"]


def test_create_model_builds_modules_only():
    with pytest.raises(ValueError, match=r"vgg_flax.pretrained\('vgg16', num_classes=10\)"):
        vgg_flax.create_model("vgg16", pretrained=True, num_classes=10)
    assert isinstance(vgg_flax.create_model("A", width=0.125), vgg_flax.VGG)
