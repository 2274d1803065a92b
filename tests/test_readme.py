"""README.md stays true: its model-building example runs, and its shell commands run as written.

Every command of the README's shell code blocks (```sh, ```bash, ```console or unlabelled) is
found generically, so commands added later are covered too. Quick ones run for real from a
scratch folder laid out like a checkout after `make demo` (runs/demo and runs/narrow from one
tiny training run, experiments/ and .venv/ linked, photo.jpg and photos/ generated); their exit
status must be 0. Slow ones are listed in SLOW with the reason (a full training run, ImageNet,
a download); for those the command line itself is checked: every flag parses (argparse, absl
config fields), make targets exist, other programs answer --help. Commands quoted inline in the
prose (with placeholders such as DIR) are checked the same way.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_BLOCKS = ("", "sh", "bash", "shell", "console")
BIN = pathlib.Path(sys.executable).parent

# Commands that cannot run in a test, each with why; matched by regular expression. Only their
# command line is checked (check_parses). Everything else in the README runs for real.
SLOW = (
    (r"^make demo\b", "trains full-width VGG-A for ~10 minutes"),
    (r"^make test\b", "the whole test suite, this test included"),
    (r"imagenet2012|--manual-dir|configs/(a|b|c|d|e|alrn)_\w+\.py", "needs ILSVRC-2012 prepared"),
    (
        r"vgg\d+(_bn)?-[0-9a-f]{8}\.pth|ckpt/vgg16|--weights vgg\d+",
        "needs a full-size torchvision weight file (0.5 GB, downloaded)",
    ),
    (r"experiments\.train .*configs/digits\.py", "a full training run (minutes on a CPU)"),
    (r"parity vgg11_bn --train-steps", "float64 training of full-width VGG-11 beside PyTorch"),
    (r"^tensorboard\b", "starts a server that runs until stopped"),
)


def test_model_example_runs():
    text = README.read_text()
    block = re.search(r"## Build a model and run it\s+```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (1, 1000)
    assert namespace["scores"].shape == (1, 1000)
    assert namespace["score_map"].shape == (1, 6, 10, 1000)
    assert set(namespace["feats"]) == {"relu4_2", "pool5"}
    assert set(namespace["both"]) == {"fc7", "logits"}
    assert namespace["tiny_logits"].shape == (2, 10)
    assert namespace["tiny_variables"]["params"]["conv1_1"]["kernel"].shape == (3, 3, 3, 8)
    assert namespace["spec"]["width"] == 0.125 and namespace["spec"]["head_width"] == 32


def readme_commands(text: str) -> list[str]:
    """The shell commands of the README's shell code blocks: continuations joined, comments
    and prompts dropped."""
    commands = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang not in SHELL_BLOCKS:
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            line = line[2:] if line.startswith("$ ") else line
            if line:
                commands.append(" ".join(line.split()))
    return list(dict.fromkeys(commands))  # each distinct command once


def why_slow(command: str) -> str | None:
    """The reason `command` does not run in the tests, None when it runs."""
    return next((reason for pattern, reason in SLOW if re.search(pattern, command)), None)


def inline_commands(text: str) -> list[str]:
    """Commands quoted inline in the prose (`vgg-flax ...`, `tensorboard ...`, ...) with
    arguments; their placeholders (DIR, NAME, ...) make them examples: they are parsed only."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    program = r"^(\.venv/bin/)?(python3? (-m \S+|\S+\.py)|vgg-flax|tensorboard|make)\s+\S"
    spans = re.findall(r"`([^`\n]+)`", prose)
    found = [span for span in spans if re.match(program, span) and len(span.split()) > 2]
    return list(dict.fromkeys(found))


COMMANDS = readme_commands(README.read_text())
QUICK = [c for c in COMMANDS if why_slow(c) is None]
LISTED = [c for c in COMMANDS if why_slow(c) is not None]
INLINE = inline_commands(README.read_text())


def test_readme_has_commands_of_both_kinds():
    assert "make demo" in COMMANDS and "make test" in COMMANDS
    assert QUICK and LISTED


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, digits_run) -> pathlib.Path:
    """A scratch folder where the README's commands run: the repository's experiments/ and
    .venv/, runs/demo and runs/narrow (copies of the shared short digits run, conftest.py),
    photo.jpg and photos/."""
    root = tmp_path_factory.mktemp("checkout")
    (root / "experiments").symlink_to(ROOT / "experiments")
    (root / ".venv").symlink_to(pathlib.Path(sys.prefix))
    for name in ("demo", "narrow"):
        shutil.copytree(digits_run[0], root / "runs" / name)
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for path in (root / "photo.jpg", root / "photos" / "a.jpg", root / "photos" / "b.png"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return root


@pytest.mark.parametrize("command", QUICK)
def test_quick_command_runs(command, checkout):
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "VGG_FLAX_CACHE": str(checkout / "cache"),
    }
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("command", LISTED + INLINE)
def test_slow_command_parses(command):
    argv = shlex.split(re.sub(r"\[[^\]]*\]", "", command))  # [--optional] parts are syntax
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv.pop(0)  # VAR=value prefixes
    program = os.path.basename(argv[0])
    if program == "make":
        done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    elif program == "vgg-flax":
        parse(command, lambda: importlib.import_module("vgg_flax.cli").build_parser(), argv[1:])
    elif program.startswith("python") and argv[1].endswith(".py"):
        done = subprocess.run(
            [sys.executable, argv[1], "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{command}: --help failed: {done.stderr[-1000:]}"
    elif program.startswith("python") and argv[1] == "-m":
        module = importlib.import_module(argv[2])
        if hasattr(module, "build_parser"):
            parse(command, module.build_parser, argv[3:])
        else:
            check_absl_flags(command, argv[2], argv[3:])
    else:
        problem = help_fails(argv[0])
        assert problem is None, f"{command}: {argv[0]} --help failed: {problem}"


@functools.cache  # a program quoted several times answers once
def help_fails(program: str) -> str | None:
    """Why `program --help` fails (None: it exits 0).

    The environment's own scripts come first, as in an activated virtualenv (make test runs
    .venv/bin/python without activating it)."""
    found = shutil.which(program, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([found or program, "--help"], capture_output=True, text=True, timeout=120)
    return None if done.returncode == 0 else done.stderr[-1000:]


def parse(command: str, build_parser, args: list[str]) -> None:
    """argparse accepts `args` (SystemExit means it did not)."""
    try:
        build_parser().parse_args(args)
    except SystemExit as stop:  # --version and --help exit 0
        if stop.code not in (0, None):
            pytest.fail(f"the README's `{command}` does not parse (exit {stop.code})")


def check_absl_flags(command: str, module: str, args: list[str]) -> None:
    """`experiments.train`'s absl flags: known names, and `--config.a.b=v` fields that exist."""
    flags: dict[str, str | None] = {}
    tokens = iter(args)
    for arg in tokens:
        assert arg.startswith("--"), f"{command}: unexpected argument {arg!r}"
        name, equals, value = arg[2:].partition("=")
        flags[name] = value if equals else next(tokens, None)
    path, _, mode = (flags.get("config") or "").partition(":")
    spec = importlib.util.spec_from_file_location("readme_config", ROOT / path)
    assert spec is not None, f"{command}: config {path} not found"
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    config = loaded.get_config(mode or None)
    for name in flags:
        if name in ("config", "workdir"):
            continue
        assert name.startswith("config."), f"{command}: unknown flag --{name} of {module}"
        node = config
        for part in name.split(".")[1:]:
            assert part in node, f"{command}: the config has no field {name[len('config.') :]}"
            node = node[part]
