"""The repository stands alone: it cites no file outside itself, and evaluation needs no torch."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import vgg_flax

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Written in pieces so that this file does not match its own patterns.
FORBIDDEN = ("PAPER" + ".md", "ENVIRONMENT" + ".md", "shared" + "/", ".." + "/shared")

# Runs `experiments.evaluate` as `python -m` would, in a process where importing torch or
# torchvision fails (a finder that refuses them, so no module is left half-registered).
NO_TORCH = """
import importlib.abc, runpy, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"import of {name} blocked", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("torch is importable: the blocker does not work")
sys.argv = ["evaluate", *sys.argv[1:]]
runpy.run_module("experiments.evaluate", run_name="__main__")
"""


def repository_files() -> list[pathlib.Path]:
    """Tracked files plus new ones git does not ignore (present in the working tree)."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def test_no_file_cites_files_outside_the_repository():
    files = repository_files()
    assert any(path.name == "README.md" for path in files)
    found = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary files
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {w}" for w in FORBIDDEN if w in line]
    assert not found, "cite docs/paper.md or docs/environment.md instead:\n" + "\n".join(found)


def test_docs_exist():
    for name in ("paper.md", "environment.md"):
        assert (ROOT / "docs" / name).stat().st_size > 1000


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_evaluate_help_without_torch():
    result = run_without_torch("--help")
    assert result.returncode == 0, result.stderr
    assert "--checkpoint" in result.stdout
    assert "(default: imagenet2012)" in result.stdout  # defaults are shown


@pytest.mark.tensorflow  # the images are read through vgg_flax.data (TensorFlow)
def test_evaluate_checkpoint_without_torch(tmp_path):
    # A narrow VGG-A with 10 classes, saved as a vgg-flax checkpoint; a folder of 10 images of
    # 224x240, one per class, each rescaled to Q = 224, the smallest test scale dense evaluation
    # takes (fc6's 7x7 window on pool5's map). (Not the digits: for a checkpoint that records
    # no input size, the data module renders all 1,437 training digits at 224 for their mean.)
    model = vgg_flax.create_model("A", width=0.125, head_width=32, num_classes=10)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    checkpoint = vgg_flax.save(tmp_path / "model", model, variables)
    rng = np.random.default_rng(0)
    for label in range(10):
        folder = tmp_path / "images" / "validation" / f"class{label}"
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (224, 240, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "image.png")
    output = tmp_path / "result.json"
    result = run_without_torch(
        "--checkpoint",
        checkpoint,
        "--dataset",
        "folder",
        "--folder",
        str(tmp_path / "images"),
        "--protocol",
        "dense",
        "--scales",
        "224",
        "--limit",
        "8",
        "--batch-size",
        "16",
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("dense at Q=[224]: top-1 error ")
    assert "on 8 images (1 compiled shapes)" in lines[-2]
    printed = json.loads(lines[-1])
    assert printed == json.loads(output.read_text())
    assert printed["examples"] == 8
    assert printed["dataset"] == "folder"
    assert printed["split"] == "validation"
    assert 0 <= printed["top5_error"] <= printed["top1_error"] <= 100


def test_experiment_commands_run_from_outside_the_repository(tmp_path):
    """From any folder the experiments run as `vgg-flax` subcommands; no top-level package
    named `experiments` is installed for them (the name is any project's)."""
    for command in ("evaluate", "reproduce"):
        result = subprocess.run(
            [str(pathlib.Path(sys.executable).parent / "vgg-flax"), command, "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "--checkpoint" in result.stdout
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('experiments'))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert found.stdout.strip() == "None", found.stdout
