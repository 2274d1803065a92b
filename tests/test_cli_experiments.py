"""`vgg-flax train|evaluate|reproduce` run the experiments from any folder, and an install puts
no top-level package named `experiments` into site-packages (experiments/ installs as
`vgg_flax.experiments`, pyproject.toml's package-dir).

The wheel is built from a copy of the checkout and installed into a scratch folder, so the
installed commands are tested without the checkout on the path, each in a process of its own;
the checkout's own use (its folder on the path, as PYTHONPATH puts it for this environment's
commands) is tested too, in this process, which has the checkout on its path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from quick_compile import quick_compile_env

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "experiments" / "configs").glob("*.py"))
# The console script's body, plus whether a top-level `experiments` got imported on the way.
VGG_FLAX = """
import sys
from vgg_flax.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # --help, argparse's errors
    code = stop.code
print("top-level experiments imported:", "experiments" in sys.modules)
sys.exit(code)
"""


def tree_packages(folder: Path, name: str) -> set[str]:
    """Every package under `folder` (a directory with __init__.py), dotted under `name`."""
    return {
        ".".join((name, *init.parent.relative_to(folder).parts))
        for init in folder.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_pyproject_lists_every_package_and_no_top_level_experiments():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    assert {name.split(".")[0] for name in listed} == {"vgg_flax"}
    assert setuptools["package-dir"] == {"vgg_flax.experiments": "experiments"}
    expected = tree_packages(ROOT / "vgg_flax", "vgg_flax") | tree_packages(
        ROOT / "experiments", "vgg_flax.experiments"
    )
    assert listed == expected  # a new subpackage must be added to the list


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding vgg-flax installed from a wheel built from the checkout's files."""
    scratch = tmp_path_factory.mktemp("wheel")
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    source = scratch / "src"
    for name in names:  # a copy: building in the checkout would leave build/ there
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", scratch / "dist", source],
        check=True,
        timeout=300,
    )
    (wheel,) = (scratch / "dist").glob("vgg_flax-*.whl")
    target = scratch / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", target, wheel],
        check=True,
        timeout=300,
    )
    return target


def test_wheel_has_no_top_level_experiments(installed):
    (wheel,) = (installed.parent / "dist").glob("vgg_flax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = wheel.name.split("-py")[0] + ".dist-info"
    assert {name.split("/")[0] for name in names} == {"vgg_flax", dist_info}, names
    for module in ("train", "evaluate", "reproduce_tables", "paper_results"):
        assert f"vgg_flax/experiments/{module}.py" in names
    configs = "vgg_flax/experiments/configs/"
    shipped = sorted(name.removeprefix(configs) for name in names if name.startswith(configs))
    assert shipped == CONFIGS and "vgg_flax/train/base_config.py" in names


def run_vgg_flax(
    args: list[str], cwd: Path, path: Path, quick_compile: bool = False
) -> subprocess.CompletedProcess:
    """`vgg-flax ARGS` in `cwd`, with only `path` (and the environment's packages) importable;
    `quick_compile`: XLA's quick compile (tests/quick_compile.py)."""
    env = {**os.environ, "PYTHONPATH": str(path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if quick_compile:
        env = quick_compile_env(env)
    return subprocess.run(
        [sys.executable, "-c", VGG_FLAX, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


# docs/training.md's smoke run (narrow: train_tiny.TINY's widths). tests/test_readme.py leaves
# it to test_installed_train_runs_a_shipped_config_from_any_folder, which runs it as written.
DOCUMENTED_TRAIN = (
    "vgg-flax train --config digits:local --workdir runs/tiny --config.width=0.125 "
    "--config.head_width=32"
)


def test_installed_train_runs_a_shipped_config_from_any_folder(installed, tmp_path):
    """docs/training.md's `vgg-flax train --config digits:local ...`, as written, from the wheel
    install in an empty folder."""
    assert DOCUMENTED_TRAIN in (ROOT / "docs" / "training.md").read_text()
    program, *args = DOCUMENTED_TRAIN.split()
    assert program == "vgg-flax"
    done = run_vgg_flax(args, tmp_path, installed, quick_compile=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steps 2/2" in done.stdout and "eval: top-1 accuracy" in done.stdout
    assert "top-level experiments imported: False" in done.stdout
    run = tmp_path / "runs" / "tiny"
    assert (run / "model").is_dir() and (run / "summary.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert (config["width"], config["head_width"]) == (0.125, 32)


def run_in_checkout(args: list[str], cwd: Path, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """`vgg-flax ARGS` in `cwd` from the checkout, in this process (as the console script runs
    `main`): its `experiments` is the checkout's, as in a process with it on PYTHONPATH."""
    import experiments
    from vgg_flax.cli import main

    assert Path(experiments.__file__).parent == ROOT / "experiments"
    monkeypatch.chdir(cwd)
    try:
        code = main(args)
    except SystemExit as stop:  # --help, argparse's errors
        code = stop.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("command", ["evaluate", "reproduce", "train"])
@pytest.mark.parametrize("where", ["installed", "checkout"])
def test_help_from_any_folder(command, where, request, tmp_path, monkeypatch, capsys):
    args = [command, "--help"]
    if where == "installed":
        done = run_vgg_flax(args, tmp_path, request.getfixturevalue("installed"))
    else:
        done = run_in_checkout(args, tmp_path, monkeypatch, capsys)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"usage: vgg-flax {command}" in done.stdout
    assert ("--checkpoint" if command != "train" else "--config") in done.stdout
    if command != "train":  # train's two options are required: no default to show
        assert "(default:" in done.stdout
    if where == "installed":
        assert "top-level experiments imported: False" in done.stdout


def test_checkout_train_loads_configs_by_name_and_path_from_any_folder(
    tmp_path, monkeypatch, capsys
):
    def run(args: list[str]) -> subprocess.CompletedProcess:
        return run_in_checkout(args, tmp_path, monkeypatch, capsys)

    # A field the config lacks: absl stops after loading the config, before any training; the
    # override in absl's `--name=value` form and in its `--name value` form.
    for config, override in (
        ("digits:local", ["--config.no_such_field=1"]),
        (str(ROOT / "experiments" / "configs" / "a_256.py:local"), ["--config.no_such_field", "1"]),
    ):
        done = run(["train", "--config", config, "--workdir", "w", *override])
        assert done.returncode == 2, done.stderr[-3000:]
        assert "no field 'no_such_field'" in done.stderr
    done = run(["train", "--config", "nonesuch", "--workdir", "w"])
    assert done.returncode == 2 and "neither a file nor a shipped config" in done.stderr
    assert "digits" in done.stderr  # the names it would take
    done = run(["train", "--config", "digits"])
    assert done.returncode == 2 and "--workdir" in done.stderr  # argparse, before absl
    assert not (tmp_path / "w").exists()  # nothing trained
