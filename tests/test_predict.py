"""`vgg-flax predict` against torchvision's own `weights.transforms()` + model on a real photo."""

import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision import transforms

import vgg_flax
from vgg_flax.classes import CLASSES_FILE, torchvision_categories
from vgg_flax.cli import main
from vgg_flax.inference.prediction import image_files, top_k
from vgg_flax.preprocessing import TORCHVISION_MEAN, TORCHVISION_STD


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """A folder holding scikit-learn's sample photo of a Chinese temple, as a JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(load_sample_images().images[0]).save(folder / "china.jpg", quality=90)
    return folder


def test_predict_matches_torchvision_transforms_and_model(photo_dir, tmp_path, capsys):
    torch.manual_seed(0)
    net = torchvision.models.vgg11().eval()
    weights = torchvision.models.VGG11_Weights.IMAGENET1K_V1
    image = weights.transforms()(Image.open(photo_dir / "china.jpg").convert("RGB"))[None]
    with torch.no_grad():
        # Random weights give near-uniform posteriors: spread the logits (std 3) so that the
        # top-5 classes and their probabilities are well separated and worth comparing.
        net.classifier[6].weight.mul_(3.0 / net(image).std())
        expected = torch.softmax(net(image), dim=1)[0].double().numpy()
    pth = tmp_path / "vgg11.pth"
    torch.save(net.state_dict(), pth)
    del net

    assert main(["predict", str(photo_dir), "--weights", str(pth), "--json"]) == 0
    [found] = json.loads(capsys.readouterr().out)
    assert found["image"] == str(photo_dir / "china.jpg")
    order = np.argsort(-expected)[:5]
    assert expected[order[0]] - expected[order[4]] > 0.01  # a meaningful ranking
    categories = weights.meta["categories"]
    assert [t["index"] for t in found["top"]] == order.tolist()
    assert [t["name"] for t in found["top"]] == [categories[i] for i in order]
    np.testing.assert_allclose([t["probability"] for t in found["top"]], expected[order], atol=1e-4)


def test_predict_dense_protocol_on_a_checkpoint(photo_dir, tmp_path, capsys):
    """The paper's dense protocol on a saved 10-class model: the mean posterior of the whole
    image and its flip, torchvision resizing the photo as reference."""
    model = vgg_flax.create_model("A", width=0.125, head_width=32, num_classes=10)
    photo = Image.open(photo_dir / "china.jpg").convert("RGB")
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    normalise = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(TORCHVISION_MEAN, TORCHVISION_STD)]
    )
    x = normalise(transforms.Resize(224)(photo)).permute(1, 2, 0).numpy()
    views = np.stack([x, x[:, ::-1]])
    dense = jax.jit(functools.partial(model.apply, mode="dense"))
    fc8 = variables["params"]["fc8"]
    # Spread the near-uniform posteriors of random weights: logits of std 3.
    fc8["kernel"] = fc8["kernel"] * 3.0 / np.std(dense(variables, views))
    expected = np.asarray(jax.nn.softmax(dense(variables, views))).mean(axis=0)
    vgg_flax.save(tmp_path / "model", model, variables, preprocessing="torchvision")

    args = ["predict", str(photo_dir / "china.jpg"), "--weights", str(tmp_path / "model")]
    options = ["--protocol", "dense", "--scales", "224", "--top", "3", "--batch-size", "2"]
    assert main([*args, *options]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(photo_dir / "china.jpg") and len(lines) == 4
    for line, (index, name, probability) in zip(lines[1:], top_k(expected, 3), strict=True):
        assert line.endswith(f"{name} ({index})") and name == f"class {index}"
        assert float(line.split()[1].rstrip("%")) == pytest.approx(100 * probability, abs=1e-3)


def test_predict_reads_input_size_and_class_names(photo_dir, tmp_path, capsys):
    """A network trained on 32x32 crops (as the digits demo) with its class names recorded."""
    model = vgg_flax.create_model("A", width=0.125, head_width=32, num_classes=10)
    variables = jax.jit(model.init)(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
    names = [f"digit {i}" for i in range(10)]
    photo = Image.open(photo_dir / "china.jpg").convert("RGB")
    reference = transforms.Compose(
        [
            transforms.Resize(36),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(TORCHVISION_MEAN, TORCHVISION_STD),
        ]
    )
    x = reference(photo).permute(1, 2, 0).numpy()[None]
    classify = jax.jit(model.apply)
    fc8 = variables["params"]["fc8"]
    fc8["kernel"] = fc8["kernel"] * 3.0 / np.std(classify(variables, x))
    expected = np.asarray(jax.nn.softmax(classify(variables, x)))[0]
    metadata = {"preprocessing": "torchvision", "input_size": 32, "class_names": names}
    vgg_flax.save(tmp_path / "model", model, variables, **metadata)

    args = ["predict", str(photo_dir), "--weights", str(tmp_path / "model"), "--scales", "36"]
    assert main([*args, "--json"]) == 0
    [found] = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in found["top"]] == [names[i] for i, _, _ in top_k(expected, 5)]
    np.testing.assert_allclose(
        [t["probability"] for t in found["top"]], np.sort(expected)[::-1][:5], atol=1e-5
    )
    # The library call takes the same defaults from the usage record (36: the recorded resize).
    metadata["eval_scale"] = 36
    vgg_flax.save(tmp_path / "resized", model, variables, **metadata)
    [prediction] = vgg_flax.predict([photo_dir], *vgg_flax.load(tmp_path / "resized"))
    assert [name for _, name, _ in prediction.top] == [names[i] for i, _, _ in top_k(expected, 5)]
    np.testing.assert_allclose(
        [p for _, _, p in prediction.top], np.sort(expected)[::-1][:5], atol=1e-5
    )


def test_errors_name_the_problem(photo_dir, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.jpg"), "--weights", "vgg11"]) == 2
    assert "missing.jpg: no such file or folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no images"):
        image_files([tmp_path])
    assert main(["predict", str(photo_dir), "--weights", str(tmp_path / "nothing.pth")]) == 2
    assert "not a pretrained name" in capsys.readouterr().err


def test_shipped_class_names_are_torchvisions():
    categories = torchvision.models.VGG11_Weights.IMAGENET1K_V1.meta["categories"]
    assert vgg_flax.imagenet_classes() == categories == torchvision_categories()
    text = (Path(vgg_flax.__file__).parent / CLASSES_FILE).read_text(encoding="utf-8")
    assert "BSD 3-Clause License" in text  # the licence travels with the names
