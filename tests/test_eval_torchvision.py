"""`center` on converted torchvision weights against torchvision's own evaluation.

A seeded random torchvision vgg11 is saved as a .pth file; a few generated JPEGs of several sizes
are evaluated by torchvision (PIL, Resize(256), CenterCrop(224), Normalize) and by vgg-flax (data
pipeline, converter, protocol, command line); the top-5 sets must be identical.
"""

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from experiments import evaluate as evaluate_cli
from vgg_flax import data
from vgg_flax.evaluate import evaluate, runner
from vgg_flax.evaluate.metrics import TopKCounts

SIZES = [(300, 400), (256, 256), (500, 333), (240, 320), (411, 289)]


def smooth_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A natural-looking image: upsampled coarse colour noise plus mild fine noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    noisy = base + rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("center")
    rng = np.random.default_rng(0)
    files = []
    for index, (height, width) in enumerate(SIZES):
        folder = root / "images" / "validation" / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{index}.jpg"
        smooth_image(rng, height, width).save(path, quality=90)
        files.append(path)
    torch.manual_seed(0)
    net = torchvision.models.vgg11(weights=None).eval()
    weights = root / "vgg11-seeded.pth"
    torch.save(net.state_dict(), weights)
    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in files])
        logits = net(batch).numpy()
    del net
    return root, weights, files, logits


def test_center_top5_sets_match_torchvision(setup):
    root, weights, files, logits = setup
    data_config = data.default_config(
        source="folder", folder=str(root / "images"), normalize="torchvision"
    )
    scorer = runner.load_network(weights)  # arch "vgg11" read from the file name
    examples = runner.dataset_examples(data_config, "center", [256])
    posteriors = {key[2]: p for key, p in evaluate([scorer], examples, "center")}
    assert len(posteriors) == len(files)
    for path, torch_logits in zip(files, logits, strict=True):
        (key,) = [k for k in posteriors if k.endswith(path.name)]
        ours = set(np.argsort(-posteriors[key])[:5].tolist())
        theirs = set(np.argsort(-torch_logits)[:5].tolist())
        assert ours == theirs, f"{path.name}: {sorted(ours)} vs torchvision {sorted(theirs)}"
    # Top-1 agreement too, and the posteriors are torchvision's soft-max up to pixel rounding.
    for path, torch_logits in zip(files, logits, strict=True):
        (key,) = [k for k in posteriors if k.endswith(path.name)]
        assert np.argmax(posteriors[key]) == np.argmax(torch_logits)


def test_command_line_reports_torchvision_errors(setup, tmp_path):
    root, weights, files, logits = setup
    labels = np.array([int(p.parent.name[-1]) for p in files])
    expected = TopKCounts().add(logits, labels).errors()
    output = tmp_path / "result.json"
    argv = ["--checkpoint", str(weights), "--protocol", "center", "--dataset", "folder"]
    argv += ["--folder", str(root / "images"), "--output", str(output)]
    assert evaluate_cli.main(argv) == 0
    result = json.loads(output.read_text())
    assert result["examples"] == len(files)
    assert result["top1_error"] == pytest.approx(expected["top1"])
    assert result["top5_error"] == pytest.approx(expected["top5"])
    assert result["compiled_shapes"] == 1
