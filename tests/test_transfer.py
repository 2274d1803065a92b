"""Transfer (Appendix B): descriptors, the linear probe, fine-tuning with a frozen trunk.

Descriptors of a narrow random VGG-A on crops of scikit-learn's photos are checked against the
recipe computed here from the trunk's pool5 with `lax` convolutions (fc6 a 7x7 conv, fc7 1x1),
spatial mean, flip average, scale average / stack and L2 norm; and on 4 simulated devices
(the `vgg-flax features` command in a subprocess) against one. The probe and fine-tuning run on
the digits (rendered at 32x32 as the demo does) with the suite's short digits run
(`digits_run`, ~75% accuracy, narrow); the issue's 95% / 90% figures on the demo's full-width
model are measured by the commands of docs/transfer.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_tiny
from PIL import Image

from vgg_flax import save
from vgg_flax.cli import main
from vgg_flax.models.vgg import architecture, create_model
from vgg_flax.train.init import init_variables
from vgg_flax.transfer import descriptors as desc
from vgg_flax.transfer import freezing, probe
from vgg_flax.transfer.images import class_folder, digits_folder
from vgg_flax.weights.loading import Loaded, load
from vgg_flax.weights.usage import Usage

ROOT = Path(__file__).resolve().parents[1]
SCALES = (224, 256)
# Crops (top, left, height, width) of the photos: two landscapes sharing a padded shape at each
# scale (so masks tell them apart) and a portrait; two padded shapes per scale.
CROPS = [(0, 0, 224, 250), (100, 200, 224, 240), (30, 40, 250, 224)]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(net folder, Loaded, crop files): a narrow random VGG-A and crops of the sample photos."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("transfer")
    files = []
    for index, (top, left, height, width) in enumerate(CROPS):
        photo = load_sample_images().images[index % 2]
        path = root / "photos" / f"crop{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(photo[top : top + height, left : left + width]).save(path)
        files.append(str(path))
    model = create_model("A", num_classes=10, **train_tiny.TINY)
    variables = init_variables(model, jax.random.key(0), 32)
    save(root / "net", model, variables)
    return root, Loaded(model, variables, Usage(architecture(model))), files


def recipe(loaded: Loaded, file: str, scales) -> tuple[np.ndarray, np.ndarray]:
    """The paper's descriptor of one file (scales averaged, stacked), computed directly: each
    view alone at its own size, no batching, padding or masks."""
    model, variables, _ = loaded
    image = Image.open(file).convert("RGB")
    per_scale = []
    for q in scales:
        width, height = image.size
        size = (q, q * height // width) if width <= height else (q * width // height, q)
        pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR), np.float64) / 255
        x = ((pixels - MEAN) / STD).astype(np.float32)
        views = np.stack([x, x[:, ::-1]])  # the image and its flip
        per_scale.append(np.asarray(_relu7_mean(variables, views), np.float64).mean(axis=0))
    average, stack = np.mean(per_scale, axis=0), np.concatenate(per_scale)
    return average / np.linalg.norm(average), stack / np.linalg.norm(stack)


@jax.jit
def _relu7_mean(variables, views):
    """relu7's spatial mean from pool5: fc6 as a 7x7 VALID conv, fc7 as a 1x1 conv."""
    model = create_model("A", num_classes=10, **train_tiny.TINY)
    h = model.apply(variables, views, features=["pool5"])["pool5"]
    for name in ("fc6", "fc7"):
        layer = variables["params"][name]
        h = jax.lax.conv_general_dilated(
            h,
            layer["kernel"],
            (1, 1),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision="highest",
        )
        h = jax.nn.relu(h + layer["bias"])
    return h.mean(axis=(1, 2))


@pytest.fixture(scope="module")
def one_device(photos, tmp_path_factory):
    """Descriptors (average, then stack from the cache) of the crops on one device."""
    root, loaded, files = photos
    cache = tmp_path_factory.mktemp("cache")
    average = desc.descriptors(loaded, files, scales=SCALES, batch_size=2, cache_dir=cache)
    stack = desc.descriptors(
        loaded, files, scales=SCALES, aggregate_scales="stack", cache_dir=cache
    )
    return average, stack


def test_descriptors_equal_the_papers_recipe(photos, one_device):
    _, loaded, files = photos
    average, stack = one_device
    assert average.computed == len(files) and stack.computed == 0  # stack: all from the cache
    assert average.features.shape == (len(files), 32) and stack.features.shape[1] == 64
    for row, file in enumerate(files):
        expected_average, expected_stack = recipe(loaded, file, SCALES)
        np.testing.assert_allclose(average.features[row], expected_average, atol=1e-6)
        np.testing.assert_allclose(stack.features[row], expected_stack, atol=1e-6)
    assert average.recipe["scales"] == list(SCALES) and average.recipe["layer"] == "relu7"


def test_features_command_on_four_devices_equals_one(photos, one_device, tmp_path):
    root, _, _ = photos
    out = tmp_path / "feats.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    script = "import sys; from vgg_flax.cli import main; sys.exit(main())"
    args = ["features", str(root / "photos"), "--weights", str(root / "net"), "--out", str(out)]
    args += ["--scales", *map(str, SCALES), "--batch-size", "3"]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 images, 32-D descriptors (3 computed, 0 from the cache)" in done.stdout
    assert not (tmp_path / "feats.npz.cache").exists()  # removed once the output is written
    four = desc.Descriptors.load(out)
    assert four.labels is None and len(four.files) == 3
    np.testing.assert_allclose(four.features, one_device[0].features, atol=1e-6)


def test_an_interrupted_extraction_resumes_from_its_cache(photos, monkeypatch, tmp_path):
    _, loaded, files = photos
    from vgg_flax.inference import prediction

    loads = []
    real = prediction.load_views

    def killed_at_the_third(path, *args):
        loads.append(path)
        if len(loads) == 3:
            raise KeyboardInterrupt  # as Ctrl-C would stop it
        return real(path, *args)

    monkeypatch.setattr(prediction, "load_views", killed_at_the_third)
    options = {"scales": (224,), "batch_size": 1, "cache_dir": tmp_path / "cache"}
    with pytest.raises(KeyboardInterrupt):
        desc.descriptors(loaded, files, **options)
    monkeypatch.setattr(prediction, "load_views", real)
    resumed = desc.descriptors(loaded, files, **options)
    assert resumed.computed == len(files) - 2  # the two finished files were not redone
    for row, file in enumerate(files):
        np.testing.assert_allclose(
            resumed.features[row], recipe(loaded, file, (224,))[0], atol=1e-6
        )
    with pytest.raises(ValueError, match="another recipe or weights .*scales"):
        desc.descriptors(loaded, files, **{**options, "scales": (256,)})


def test_bad_inputs_are_clear_errors(photos, tmp_path):
    _, loaded, files = photos
    one = tmp_path / "one"
    (one / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "cats" / "a.png")
    with pytest.raises(ValueError, match="two class subfolders.*one class \\('cats'\\)"):
        class_folder(one)
    (one / "dogs").mkdir()
    (one / "dogs" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt is not an image file"):
        class_folder(one)
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    with pytest.raises(ValueError, match="fake.jpg: not an image PIL can read"):
        desc.descriptors(loaded, [str(fake)], scales=(224,))
    rng = np.random.default_rng(0)
    train, labels = rng.normal(size=(20, 32)), np.arange(20) % 2
    with pytest.raises(ValueError, match="test descriptors has 64-D descriptors.*32-D"):
        probe.probe(train, labels, rng.normal(size=(4, 64)), np.arange(4) % 2)
    with pytest.raises(ValueError, match="1 class; a probe needs at least two"):
        probe.probe(train, np.zeros(20))


PERMUTED = [(digit * 3 + 1) % 10 for digit in range(10)]  # a new 10-class task


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The demo's digits as root/train|val/<class>/ PNGs, relabelled by PERMUTED."""
    root = tmp_path_factory.mktemp("digits")
    digits_folder(root, PERMUTED)
    return root


def test_probe_on_descriptors_of_the_trained_digits_net(digits_run, digits, tmp_path, capsys):
    workdir, _ = digits_run
    feats = {}
    for split, folder in (("train", "train"), ("test", "val")):
        feats[split] = tmp_path / f"{split}.npz"
        args = ["features", str(digits / folder), "--weights", str(workdir / "model")]
        args += ["--scales", "32", "--batch-size", "256"]  # the net's own size: one shape
        assert main([*args, "--out", str(feats[split])]) == 0
    capsys.readouterr()
    args = ["probe", str(feats["train"]), "--test", str(feats["test"]), "--Cs", "1", "100"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_examples"] == 360 and result["train_examples"] == 1437
    # The short run's narrow net (~75% itself, 32-D relu7) gives ~68%; the demo's net >= 95%
    # (docs/transfer.md).
    assert result["metrics"]["top1"] >= 0.6, result
    assert set(result["validation"]) == {"1.0", "100.0"}  # C chosen on a held-out 20%
    train = desc.Descriptors.load(feats["train"])
    logistic = probe.probe(train.features, train.labels, classifier="logistic", C=10.0)
    assert logistic.metrics["mean_class_recall"] >= 0.7 and not logistic.validation


def test_fine_tuning_with_a_frozen_trunk(digits_run, digits, tmp_path):
    from experiments.configs import finetune
    from vgg_flax.train import trainer

    workdir, _ = digits_run
    config = finetune.get_config()
    config.init_from = str(workdir / "model")
    config.data.folder = str(digits)
    config.data.flip = False  # a flipped digit is another symbol
    config.update(batch_size=32, eval_batch_size=120, total_steps=120, dropout=0.0)
    config.update(eval_every_steps=120, log_every_steps=40)
    config.optim.learning_rate = 0.02
    config.checkpoint.every_steps = 120
    summary = trainer.train(config, str(tmp_path / "run"))
    before, after = load(workdir / "model"), load(tmp_path / "run" / "model")
    assert after.usage.preprocessing == before.usage.preprocessing
    frozen = freezing.frozen_layers(before.variables["params"], "pool5")
    assert frozen and all(name.startswith(("conv", "bn")) for name in frozen)
    for collection in ("params", "batch_stats"):
        for name in frozen:
            if name not in before.variables[collection]:
                continue
            old = jax.tree.leaves(before.variables[collection][name])
            new = jax.tree.leaves(after.variables[collection][name])
            assert all(np.array_equal(a, b) for a, b in zip(old, new, strict=True)), name
    changed = (
        before.variables["params"]["fc7"]["kernel"] != after.variables["params"]["fc7"]["kernel"]
    )
    assert np.any(changed)
    # The short run's narrow net (~75%) reaches ~66% on the new task in 120 steps; the demo's
    # net >= 90% (docs/transfer.md).
    assert summary["eval"]["accuracy"] >= 0.55, summary["eval"]


def test_layer_rates_scale_and_freeze_updates():
    from vgg_flax.train import optim

    params = {
        name: {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
        for name in ("conv1_1", "conv2_1", "fc6", "fc7", "fc8")
    }
    rates = freezing.layer_rates(params, "conv1_1", {"fc[67]": 0.5})
    assert rates == {"conv1_1": 0.0, "conv2_1": 1.0, "fc6": 0.5, "fc7": 0.5, "fc8": 1.0}
    assert freezing.frozen_layers(params, "pool2") == ("conv1_1", "conv2_1")
    with pytest.raises(ValueError, match="freezes every layer"):
        freezing.frozen_layers(params, "fc8")
    with pytest.raises(ValueError, match="matches no layer"):
        freezing.layer_rates(params, None, {"bn*": 0.1})
    tx = optim.make_optimizer(lambda step: 0.1, momentum=0.9, layer_rates=rates)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert not jax.tree.leaves(state[0].inner_state.trace["conv1_1"])  # no momentum kept
    for name, factor in rates.items():
        np.testing.assert_allclose(updates[name]["kernel"], -0.1 * factor, rtol=1e-6)
