"""A newcomer's path (issue 27): own images, converted weights, the documented commands.

- Fine-tuning 1000-class weights on a folder of two classes with the shipped digits config and
  command-line overrides only (docs/training.md, "Your own images"): a fresh fc8 is said in
  one line, and `experiments.evaluate` with no flags beyond the checkpoint and the dataset
  scores exactly what the run reported. The weights: a torchvision VGG-11 `.pth` (torchvision's
  modules at a narrow net's sizes, seeded weights, `torch.save`) converted by `vgg-flax
  convert`; trained at 32x32 through the `vgg-flax train` command line (one subprocess) and
  at the folder source's 224 through the same command line in process (the run records its
  "center" protocol; the converted weights' record has none). A folder of class subfolders
  alone, split for you, with no split flag.
- `vgg_flax.predict` with what `vgg_flax.load` returns answers as `vgg-flax predict` does.
- Expected failures print one line and exit 2 (`--debug` or VGG_FLAX_DEBUG=1: the traceback):
  a download offline, bad input (a corrupt .pth, a mistyped override, a missing folder), and,
  in a process where the extras' modules cannot be imported, every entry point that needs one
  names the `pip install 'vgg-flax[EXTRA]'` to run.

Every net is narrow (conv widths / 16, a 16-wide head; the converter's full-width shapes are
tests/test_convert.py's), the images 40x40 PNGs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from quick_compile import quick_compile_env

import vgg_flax
from vgg_flax import cli
from vgg_flax.train.init import init_variables

ROOT = Path(__file__).resolve().parent.parent
NARROW = {"width": 0.0625, "head_width": 16}
CLASSES = ("cat", "dog")
# The documented fine-tuning overrides (docs/training.md), with a narrow net and a short run.
FINETUNE = [
    "--config.batch_norm=False",  # torchvision's vgg11 has none
    f"--config.head_width={NARROW['head_width']}",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.total_steps=3",
    "--config.optim.warmup_steps=0",
    "--config.log_every_steps=1",
]


SMALL_INPUT = [
    "--config.data.crop_size=32",
    "--config.data.scale=32",
    "--config.data.eval_scale=32",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """folder/<split>/<class>/*.png: reddish cats and bluish dogs, 8 + 4 of each."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("validation", 4)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (40, 40, 3))
                pixels[..., 2 * label] += 120  # red for cats, blue for dogs
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def evaluate_quietly(argv: list[str]) -> dict:
    """experiments.evaluate's JSON result (its last line of output), run in this process."""
    from experiments import evaluate

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert evaluate.main(argv) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def assert_scores_as_reported(
    workdir: Path, photos: Path, *flags: str, examples: int = 2 * 4
) -> dict:
    """The documented evaluate command (and `flags`) counts the errors the run reported."""
    summary = json.loads((workdir / "summary.json").read_text())
    result = evaluate_quietly(
        ["--checkpoint", str(workdir / "model"), "--dataset", "folder", "--folder", str(photos)]
        + list(flags)
    )
    assert result["examples"] == summary["eval"]["examples"] == examples
    errors = round((1 - summary["eval"]["accuracy"]) * examples)
    assert round(result["top1_error"] * examples / 100) == errors
    assert result["protocol"] == "center"  # what the run's evaluation used, recorded
    return result


# torchvision's vgg11 at NARROW's sizes: make_layers with A's conv widths / 16, and the
# classifier's three Linears at a 16-wide head; seeded, saved by torch.save.
SAVE_NARROW_VGG11 = """
import sys, torch, torchvision
torch.manual_seed(0)
net = torchvision.models.vgg11()
layers = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
net.features = torchvision.models.vgg.make_layers(layers)
for index, (fan_in, fan_out) in zip((0, 3, 6), ((32 * 7 * 7, 16), (16, 16), (16, 1000))):
    net.classifier[index] = torch.nn.Linear(fan_in, fan_out)
torch.save(net.state_dict(), sys.argv[1])
"""


@pytest.fixture(scope="module")
def converted_vgg11(tmp_path_factory) -> Path:
    """The narrow torchvision vgg11's `.pth`, `vgg-flax convert`ed as docs/training.md shows.

    torch runs in a process of its own: this file's other tests do not need it (see conftest).
    """
    folder = tmp_path_factory.mktemp("vgg11")
    pth = folder / "vgg11.pth"
    subprocess.run([sys.executable, "-c", SAVE_NARROW_VGG11, str(pth)], check=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["convert", str(pth), str(folder / "ckpt")]) == 0
    assert "wrote VGG A (with head" in out.getvalue()
    pth.unlink()
    usage = vgg_flax.load(folder / "ckpt").usage
    assert usage.architecture["width"] == NARROW["width"] and usage.eval_protocol is None
    return folder / "ckpt"


@pytest.mark.parametrize("mode", [None, "local"])
def test_every_shipped_config_takes_own_data_from_the_command_line(mode):
    import importlib.util

    from experiments import train

    for name in train.shipped_configs():
        spec = importlib.util.spec_from_file_location(name, train.CONFIGS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        data = module.get_config(mode).data
        missing = {"folder", "data_dir", "manual_dir", "val_fraction"} - set(data)
        assert not missing, (name, mode, missing)


def finetune_command(workdir: Path, photos: Path, weights: Path) -> list[str]:
    """docs/training.md's fine-tuning command, at NARROW's widths (those of the weights)."""
    return [
        *("train", "--config", "digits", "--workdir", str(workdir)),
        "--config.data.source=folder",
        f"--config.data.folder={photos}",
        f"--config.init_from={weights}",
        f"--config.width={NARROW['width']}",
        *FINETUNE,
    ]


@pytest.mark.torch
def test_finetune_a_converted_pth_on_a_folder_at_32_from_the_command_line(
    photos, converted_vgg11, tmp_path
):
    # The docs' commands, with the small-input flags, a short run and steps saved without
    # momentum (half the disk).
    workdir = tmp_path / "run"
    command = [
        *finetune_command(workdir, photos, converted_vgg11),
        "--config.checkpoint.optimizer_state=False",
        *SMALL_INPUT,
    ]
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from vgg_flax.cli import main; sys.exit(main())"]
        + command,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=quick_compile_env(dict(os.environ)),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [copied] = [line for line in done.stdout.splitlines() if line.startswith("copied")]
    assert ", fc7 from the A net" in copied and ", fc8" not in copied
    assert copied.endswith("; fc8 starts afresh (1000 classes in the weights, 2 in this run)")
    assert "xent=" in done.stderr and "l2=" in done.stderr  # the bar: both terms, apart
    usage = vgg_flax.load(workdir / "model").usage
    assert usage.class_names == CLASSES and usage.input_size == 32
    assert_scores_as_reported(workdir, photos)


@pytest.mark.torch
def test_finetune_a_converted_pth_at_224_scores_as_reported(
    photos, converted_vgg11, tmp_path, capsys
):
    # The same command line at the folder source's own 224 (S=256). The converted weights'
    # record has no protocol: evaluated by themselves they would get the dense one with flips.
    workdir = tmp_path / "run224"
    command = finetune_command(workdir, photos, converted_vgg11)
    command[command.index("--config.total_steps=3")] = "--config.total_steps=2"
    assert cli.main(command) == 0
    out, err = capsys.readouterr()
    assert "; fc8 starts afresh (1000 classes in the weights, 2 in this run)" in out
    assert "xent=" in err and "l2=" in err
    assert vgg_flax.load(workdir / "model").usage.input_size == 224
    # Not the dense protocol with flips (published weights' default): the run's own, recorded.
    assert assert_scores_as_reported(workdir, photos)["scales"] == [256]


def test_a_folder_split_for_you_scores_as_reported_with_no_split_flag(photos, tmp_path, capsys):
    # folder/<class>/ alone (docs/training.md): its held-out part ("val", also "validation",
    # the default of both sides) needs no split flag.
    classes = tmp_path / "classes"
    for name in CLASSES:
        (classes / name).mkdir(parents=True)
        for split in ("train", "validation"):
            for image in (photos / split / name).iterdir():
                shutil.copy(image, classes / name / f"{split}_{image.name}")
    workdir = tmp_path / "run"
    command = [
        *("train", "--config", "digits", "--workdir", str(workdir)),
        "--config.data.source=folder",
        f"--config.data.folder={classes}",
        f"--config.width={NARROW['width']}",
        *FINETUNE,
        *SMALL_INPUT,
    ]
    command[command.index("--config.total_steps=3")] = "--config.total_steps=1"
    assert cli.main(command) == 0
    capsys.readouterr()
    held_out = round(12 * 0.2)  # of each class's 12 images, by the default val_fraction
    result = assert_scores_as_reported(workdir, classes, examples=2 * held_out)
    assert result["split"] == "validation"


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> tuple[Path, dict]:
    """A saved narrow 1000-class VGG-A and its variables."""
    model = vgg_flax.create_model("A", **NARROW)
    variables = init_variables(model, jax.random.key(0), 32)
    return vgg_flax.save(tmp_path_factory.mktemp("a") / "a", model, variables), variables


def test_other_classes_get_a_fresh_fc8_said_in_one_line(imagenet_like, capsys):
    from vgg_flax.train.trainer import start_from

    path, source = imagenet_like
    two = vgg_flax.create_model("A", **NARROW, num_classes=2)
    target = init_variables(two, jax.random.key(1), 32)
    started = start_from(target, "A", str(path))
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("copied conv1_1") and ", fc7 from the A net" in line
    assert line.endswith("; fc8 starts afresh (1000 classes in the weights, 2 in this run)")
    np.testing.assert_array_equal(
        started["params"]["fc7"]["kernel"], source["params"]["fc7"]["kernel"]
    )
    np.testing.assert_array_equal(
        started["params"]["fc8"]["kernel"], target["params"]["fc8"]["kernel"]
    )


def test_features_only_weights_start_the_whole_head_afresh():
    from vgg_flax.train.init import with_fresh_head

    mapping = {name: name for name in ("conv1_1", "fc6", "fc7", "fc8")}
    ones = {"kernel": np.ones((3, 3, 3, 4))}
    target = {"params": {"conv1_1": ones, "fc8": {"kernel": np.ones((16, 2))}}}
    kept, note = with_fresh_head(mapping, {"params": {"conv1_1": ones}}, target)
    assert kept == {"conv1_1": "conv1_1"}
    assert note == "fc6, fc7, fc8 start afresh (the weights have no classifier)"


def test_a_shape_mismatch_is_refused_before_anything_is_said(imagenet_like, capsys):
    from vgg_flax.train.trainer import start_from

    wider = vgg_flax.create_model("A", width=0.125, head_width=16, num_classes=2)
    with pytest.raises(ValueError, match="shape mismatch at params/conv1_1"):
        start_from(init_variables(wider, jax.random.key(1), 32), "A", str(imagenet_like[0]))
    assert "copied" not in capsys.readouterr().out


def test_python_predict_with_what_load_returns_is_the_cli(digits_run, tmp_path, capsys):
    from vgg_flax.data.sources import digits_arrays

    model_dir = digits_run[0] / "model"
    images, _, _ = digits_arrays(32)["test"]
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.asarray(images[i] * 255, np.uint8)).save(files[-1])
    assert cli.main(["predict", *files, "--weights", str(model_dir), "--json", "--top", "3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    predictions = vgg_flax.predict(files, *vgg_flax.load(model_dir), top=3)
    for prediction, row in zip(predictions, shown, strict=True):
        assert [(i, n) for i, n, _ in prediction.top] == [
            (t["index"], t["name"]) for t in row["top"]
        ]
        np.testing.assert_allclose(
            [p for _, _, p in prediction.top], [t["probability"] for t in row["top"]], rtol=1e-6
        )
    loaded = vgg_flax.load(model_dir)
    with pytest.warns(UserWarning, match="without a usage record"):
        vgg_flax.predict(files[:1], loaded.model, loaded.variables, input_size=32, scales=[32])


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_a_download_offline_is_one_line(tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:  # a port just closed: nothing leaves the machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("VGG_FLAX_BASE_URL", f"http://127.0.0.1:{port}/models")
    monkeypatch.setenv("VGG_FLAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 40)).save(photo)
    assert cli.main(["predict", str(photo)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("vgg-flax predict: error: DownloadError") and "cache" in line
    with pytest.raises(OSError):  # --debug: the exception itself, with its traceback
        cli.main(["predict", str(photo), "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")  # or the environment variable
    with pytest.raises(OSError):
        cli.main(["predict", str(photo)])


# Hostile or mistaken input, each refused on one line (exit 2) that names the problem and the
# fix: (arguments, what the line must say). TRAIN: `vgg-flax train` on the digits config.
TRAIN = ["train", "--config", "digits", "--workdir", "W"]
REFUSED = {
    "corrupt .pth": (["predict", "photo.png", "--weights", "junk.pth"], "not a PyTorch checkpoint"),
    "not a checkpoint": (["export", "junk", "out.stablehlo"], "write one with vgg_flax.save"),
    "missing checkpoint": (
        ["evaluate", "--checkpoint", "nothing", "--dataset", "digits"],
        "neither",
    ),
    "layout without safetensors": (
        ["convert", "junk.pth", "out", "--layout", "timm"],
        "add --to safetensors",
    ),
    "override typo": ([*TRAIN, "--config.batchsize=8"], 'Did you mean "batch_size"'),
    "override value": ([*TRAIN, "--config.batch_size=abc"], "--config.batch_size=abc"),
    "no such folder": (
        [*TRAIN, "--config.data.source=folder", "--config.data.folder=nothing"],
        "'nothing' is not a directory; expected folder/<split>/<class>/",
    ),
    "no such weights": ([*TRAIN, "--config.init_from=nothing"], "'nothing': no such file"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_input_is_one_line(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 40)).save("photo.png")
    Path("junk.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    Path("junk").mkdir()
    Path("junk", "x").write_text("junk")
    argv, said = REFUSED[case]
    assert cli.main(argv) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(("vgg-flax ", "train: error: ", "evaluate: error: ")), line
    assert said in line and "--weights" not in line, line


def test_a_process_that_loads_tensorflow_writes_one_line(tmp_path):
    # At the file descriptor, where TensorFlow's native start-up notices would go.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from vgg_flax.cli import main; sys.exit(main())"]
        + [*TRAIN, "--config.data.source=folder", "--config.data.folder=nothing"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        timeout=300,
    )
    assert done.returncode == 2 and "tensorflow" not in done.stdout
    assert one_line_error(done.stderr).startswith("train: error: folder='nothing'")


# Each entry point that needs an extra, with arguments that reach the import; run where the
# extras' modules cannot be imported (BLOCKER), as after `pip install -e .` alone.
NEEDS_EXTRA = {
    "experiments.train": ("data", ["--config", "digits", "--workdir", "W/train"]),
    "experiments.evaluate": ("data", ["--checkpoint", "M", "--dataset", "digits"]),
    "experiments.reproduce_tables": ("data", ["--checkpoint", "M@256", "--dataset", "digits"]),
    "experiments.dataset_stats": ("data", ["--source", "digits"]),
    "experiments.perceptual_example": ("data", ["--trunk", "M", "--out", "W/perceptual"]),
    "experiments.perceptual_train": ("data", ["--trunk", "random", "--out", "W/denoiser"]),
    "vgg-flax train": ("data", ["train", "--config", "digits", "--workdir", "W/cli_train"]),
    "vgg-flax evaluate": ("data", ["evaluate", "--checkpoint", "M", "--dataset", "digits"]),
    "vgg-flax reproduce": ("data", ["reproduce", "--checkpoint", "M@256", "--dataset", "digits"]),
    "vgg-flax probe": ("data", ["probe", "F.npz"]),
    "vgg-flax prepare-data": ("data", ["prepare-data", "--source", "mnist"]),
    "vgg-flax export savedmodel": ("data", ["export", "M", "W/sm", "--format", "savedmodel"]),
    "vgg-flax export onnx": ("deploy", ["export", "M", "W/m.onnx", "--format", "onnx"]),
    "vgg-flax export --quantize": (
        "deploy",
        ["export", "M", "W/q.stablehlo", "--quantize", "int8-weights"],
    ),
    "vgg-flax predict --quantize": (
        "deploy",
        ["predict", "P.png", "--weights", "M", "--quantize", "int8-weights"],
    ),
    "vgg-flax convert .h5": ("references", ["convert", "K.h5", "W/k"]),
    "vgg-flax parity": ("torch", ["parity", "vgg11"]),
}
BLOCKED = (
    "tensorflow tensorflow_datasets sklearn torch torchvision triton keras h5py lpips piq "
    "torchmetrics jax2onnx onnx onnxruntime qwix tensorboard"
).split()
# Every finder answers "not found" for the extras' modules, as in a venv without them (so
# `importlib.util.find_spec("tensorflow")`, which Orbax's etils asks, is None too).
BLOCKER = f"""
import importlib.abc, sys

class HideExtras(importlib.abc.MetaPathFinder):
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()

    def find_distributions(self, *args, **kwargs):
        return getattr(self.finder, "find_distributions", lambda *a, **k: [])(*args, **kwargs)

sys.meta_path[:] = [HideExtras(finder) for finder in sys.meta_path]
"""
SCRIPT = """
import contextlib, importlib, io, json, sys
import jax, numpy as np, vgg_flax
from PIL import Image
from vgg_flax import cli
from vgg_flax.cli._experiments import experiments_module

tiny = vgg_flax.create_model("A", width=0.0625, head_width=16, num_classes=2)
vgg_flax.save("M", tiny, jax.jit(tiny.init)(jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3))))
np.savez("F.npz", features=np.ones((4, 3)), labels=np.array([0, 0, 1, 1]))  # descriptors
Image.new("RGB", (40, 40)).save("P.png")
open("K.h5", "wb").write(b"not HDF5")  # refused by h5py, were it there
results = {}
for name, (extra, argv) in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        if name.startswith("experiments."):
            code = experiments_module(name.split(".")[1]).main(argv)
        else:
            code = cli.main(argv)
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


def test_each_entry_point_names_its_missing_extra(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "W").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    env = quick_compile_env(env)  # its one program: the tiny net's init, for the checkpoint M
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(NEEDS_EXTRA)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = {}  # every entry point that fails, not only the first
    for name, (extra, _) in NEEDS_EXTRA.items():
        code, stderr = results[name]
        lines = [line for line in stderr.splitlines() if line.strip()]
        named = f"pip install 'vgg-flax[{extra}]'"
        if code != 2 or len(lines) != 1 or "Traceback" in stderr or named not in lines[0]:
            wrong[name] = (code, stderr[-1000:])
    assert not wrong, wrong
