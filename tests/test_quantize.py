"""Post-training int8 (Qwix): the quantised models agree with the float model.

- A digits model like the demo's, calibrated on 64 training digits: the top-1 class of at least
  99% of the test digits is the float model's, in both modes, among those the float model does
  not nearly tie (top-1 margin over NEAR_TIE logits), and of at least 98% of all 360. The model is
  the shared short training run (tests/conftest.py: narrow, about 98% accurate; a few digits are
  near ties that weights rounded by 0.4% flip); the demo's own model (full width, 98.6%
  accurate; too slow to train in a test) is measured on all 360 by benchmarks/deploy.py.
  `predict` and `experiments.evaluate` take --quantize; the StableHLO export of each quantised
  model reloads and gives its `apply` within 1e-6 (relative to the largest logit).
- A torchvision VGG-16 with seeded weights (the classifier scaled as in tests/test_predict.py),
  converted, calibrated on corner crops of scikit-learn's two photos: the top-5 set of each
  photo's center crop is the float model's.
"""

import json

import jax
import numpy as np
import pytest
from PIL import Image

import vgg_flax
from experiments import evaluate as evaluate_cli
from vgg_flax.cli import main
from vgg_flax.data.sources import digits_arrays
from vgg_flax.inference import export, quantize
from vgg_flax.preprocessing import preprocess

SIZE = 32
NEAR_TIE = 0.2  # logits: top-1 margins under this are near ties


@pytest.fixture(scope="module")
def digits(digits_run, tmp_path_factory):
    """(model, variables, test images, calibration folder) of the digits demo's model."""
    workdir, _ = digits_run
    model, variables, _ = vgg_flax.load(workdir / "model")
    arrays = digits_arrays(SIZE)
    folder = tmp_path_factory.mktemp("calibration")
    for i, image in enumerate(arrays["train"][0][:64]):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    test = np.asarray(preprocess(arrays["test"][0] / np.float32(255), "torchvision"), np.float32)
    return model, variables, test, folder


@pytest.mark.parametrize("mode", quantize.MODES)
def test_digits_top1_agreement_and_export(digits, mode, tmp_path):
    model, variables, test, folder = digits
    qmodel, qvariables = quantize.quantize_source(
        model, variables, mode, str(folder), "torchvision", SIZE
    )
    assert quantize.layers_quantized(qvariables) == [
        name for name in variables["params"] if name.startswith(("conv", "fc"))
    ]
    assert quantize.stored_bytes(qvariables) < 0.3 * quantize.stored_bytes(variables)
    expected = np.asarray(jax.jit(model.apply)(variables, test))
    found = np.asarray(jax.jit(qmodel.apply)(qvariables, test))
    same = found.argmax(-1) == expected.argmax(-1)
    ordered = np.sort(expected, axis=-1)
    clear = ordered[:, -1] - ordered[:, -2] >= NEAR_TIE
    assert clear.mean() > 0.8  # the near ties are few (89% of digits are clear here)
    assert same[clear].mean() >= 0.99 and same.mean() >= 0.98, (same[clear].mean(), same.mean())
    assert not np.array_equal(found, expected)  # quantised: not the float model itself

    path = tmp_path / "int8.stablehlo"
    export.export_stablehlo(qmodel, qvariables, str(path), image_size=SIZE, platforms=("cpu",))
    reloaded = np.asarray(export.load_stablehlo(str(path)).call(test[:7]))
    direct = np.asarray(jax.jit(qmodel.apply)(qvariables, test[:7]))  # the same batch shape
    scale = np.abs(direct).max()
    np.testing.assert_allclose(reloaded, direct, rtol=1e-6, atol=1e-6 * scale)


def test_predict_and_evaluate_take_quantize(digits_run, digits, tmp_path, capsys):
    workdir, _ = digits_run
    _, _, _, folder = digits
    model = str(workdir / "model")
    argv = ["predict", str(folder / "000.png"), "--weights", model, "--scales", "32", "--json"]
    assert main([*argv, "--quantize", "int8", "--calibrate", str(folder)]) == 0
    [found] = json.loads(capsys.readouterr().out)
    assert found["top"][0]["name"] in [str(d) for d in range(10)]
    evaluate = ["--checkpoint", model, "--dataset", "digits", "--limit", "60"]
    assert evaluate_cli.main([*evaluate, "--quantize", "int8-weights"]) == 0
    assert "on 60 images" in capsys.readouterr().out
    assert evaluate_cli.main([*evaluate, "--quantize", "int8"]) == 2  # needs --calibrate
    assert "--calibrate DIR" in capsys.readouterr().err


def test_converted_vgg16_keeps_its_top5_on_photos(tmp_path):
    import torch
    import torchvision
    from sklearn.datasets import load_sample_images

    from vgg_flax.formats.torchvision import from_torchvision
    from vgg_flax.inference.prediction import resize_smaller_side

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    transforms = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()
    torch.manual_seed(0)
    net = torchvision.models.vgg16().eval()
    crops = torch.stack([transforms(photo) for photo in photos])
    with torch.no_grad():  # spread the near-uniform logits of random weights (std 3)
        net.classifier[6].weight.mul_(3.0 / net(crops).std())
    variables = from_torchvision({k: v.numpy() for k, v in net.state_dict().items()}, "vgg16")
    del net
    model = vgg_flax.create_model("vgg16")
    for i, photo in enumerate(photos):  # calibration: the corners, not the tested centers
        resized = resize_smaller_side(photo, 256)  # the tested crops' zoom
        width, height = resized.size
        for j, (left, top) in enumerate(((0, 0), (width - 256, height - 256))):
            resized.crop((left, top, left + 256, top + 256)).save(tmp_path / f"{i}{j}.png")
    images = crops.permute(0, 2, 3, 1).numpy()
    expected = np.asarray(jax.jit(model.apply)(variables, images))
    for mode in quantize.MODES:
        qmodel, qvariables = quantize.quantize_source(model, variables, mode, str(tmp_path))
        found = np.asarray(jax.jit(qmodel.apply)(qvariables, images))
        for want, got in zip(expected, found, strict=True):
            assert set(np.argsort(-got)[:5]) == set(np.argsort(-want)[:5]), mode


def test_calibrated_mode_needs_images(digits):
    model, variables, _, _ = digits
    with pytest.raises(ValueError, match="--calibrate DIR"):
        quantize.quantize(model, variables, "int8")
    with pytest.raises(ValueError, match="unknown quantisation"):
        quantize.quantize(model, variables, "int4")
    with pytest.raises(ValueError, match="not a folder"):
        quantize.check_calibration_folder("/no/such/folder")
