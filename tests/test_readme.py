"""README.md and docs/*.md stay true: their code blocks run, and their commands run as written.

Every fenced block of README.md and docs/*.md is found generically, so blocks added later, and
new pages, are covered too:

- Shell blocks (```sh, ```bash, ```shell, ```console or unlabelled): each command, counted once
  across all the pages. Quick ones run for real from a scratch folder laid out like a checkout
  after `make demo` (runs/demo and runs/narrow from one tiny training run, experiments/ and
  .venv/ linked, photo.jpg and photos/ generated); their exit status must be 0. A `vgg-flax ...`
  or `python -m MODULE ...` command without shell syntax runs in this process (`in_process`),
  as its console script or `python -m` runs it, which spares a fresh interpreter's start-up
  (JAX, TensorFlow); any other command runs in bash. Slow ones are listed in SLOW with the
  reason (a full training run, ImageNet, a download); for those the command line itself is
  checked: every flag parses (argparse, absl config fields, TensorBoard's own parser), make
  targets exist, test files exist, scripts and other programs answer --help. Commands quoted
  inline in the prose (with placeholders such as DIR) are checked the same way.
- Python blocks: each runs in a fresh namespace in that scratch folder, unless PY_SLOW lists why
  it cannot (a download, ILSVRC-2012); those are compiled, and every module they import and
  every `vgg_flax.NAME` they use must exist. CHECKS adds assertions on what a block computes.
- ```text blocks are program output, not run; any other language is an error (so a block is
  never skipped by accident).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import io
import os
import pathlib
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
SHELL_BLOCKS = ("", "sh", "bash", "shell", "console")
OUTPUT_BLOCKS = ("text",)
BIN = pathlib.Path(sys.executable).parent

# Commands that do not run here, each with why (too slow for a test, or run as written by another
# test file); matched by regular expression. Only their command line is checked
# (test_slow_command_parses). Everything else in the pages runs for real.
SLOW = (
    (r"^make demo\b", "trains full-width VGG-A for ~10 minutes"),
    (r"^make test\b", "the whole test suite, this test included"),
    (r"^pip install\b", "installs packages from PyPI"),
    (
        r"digits_model",
        "docs/deploy.md's transcript, on a copy of the demo's fully trained model (make demo)",
    ),
    (r"-m pytest\b", "part of the test suite, which runs on its own"),
    (r"imagenet2012|--manual-dir|configs/(a|b|c|d|e|alrn)_\w+\.py", "needs ILSVRC-2012 prepared"),
    (
        r"vgg\d+(_bn)?-[0-9a-f]{8}\.pth|ckpt/vgg16|--weights vgg\d+",
        "needs a full-size torchvision weight file (0.5 GB, downloaded)",
    ),
    (r"experiments\.train .*configs/digits\.py", "a full training run (minutes on a CPU)"),
    (r"parity vgg11_bn --train-steps", "float64 training of full-width VGG-11 beside PyTorch"),
    (r"^tensorboard\b", "starts a server that runs until stopped"),
    (
        r"runs/digits",
        "docs/transfer.md: the demo's full-width model on 1,797 digit images (minutes); "
        "tests/test_transfer.py runs the same steps on the tests' narrow model",
    ),
    (r"^vgg-flax similarity\b", "downloads torchvision's vgg16 (0.5 GB) for its trunk"),
    (r"experiments\.perceptual_train\b", "trains against full-width VGG-16 metrics for minutes"),
    (r"\bPHOTOS\b", "your own images (tests/test_newcomer.py runs these on generated ones)"),
    (
        r"^vgg-flax train --config digits:local --workdir runs/tiny\b",
        "docs/training.md's smoke run: tests/test_cli_experiments.py runs it as written, from a "
        "wheel install in an empty folder (DOCUMENTED_TRAIN)",
    ),
    (
        r"-m experiments\.evaluate --checkpoint runs/demo/model --dataset digits$",
        "README.md's evaluation of the demo: tests/test_demo_evaluate.py runs it as written on "
        "the tests' digits run and checks that it counts the run's own errors (DOCUMENTED)",
    ),
)

# Python blocks that cannot run in a test, each with why; matched against the block's text.
# They are compiled and their imports and vgg_flax names checked (test_slow_python_compiles).
PY_SLOW = (
    (r"imagenet2012", "needs ILSVRC-2012 prepared"),
    (
        r"hf-hub:timm/",
        "downloads timm's weights from the Hugging Face hub (0.5 GB); tests/test_hub.py runs "
        "docs/weights.md's and docs/nnx.md's examples as written against a hub server on "
        "127.0.0.1",
    ),
    (
        r"vgg_flax\.pretrained\(|load_lpips\(|perceptual_loss\(|load_dists\(",
        "downloads published weights (torchvision's VGG, 0.5 GB; LPIPS's heads)",
    ),
    (r"vgg_dense\.onnx", "reads docs/deploy.md's ONNX export of the demo's trained model"),
    (
        r"runs/digits",
        "docs/transfer.md's image folders of the digits, read by its slow commands (minutes)",
    ),
    (
        r"\.pth\"|\.h5\"|\.caffemodel\"|\"ckpt/",
        "reads a full-size weight file (downloaded) or a checkpoint converted from one",
    ),
)


class Block(NamedTuple):
    """One fenced code block of a page."""

    page: str  # the page's path relative to the repository
    line: int  # the line of its opening fence
    heading: str  # the heading it stands under
    lang: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def code_blocks(path: pathlib.Path) -> list[Block]:
    """The fenced code blocks of a markdown page, each with the heading above it."""
    blocks, heading, fence = [], "", None
    for number, line in enumerate(path.read_text().splitlines(keepends=True), 1):
        if fence is None:
            opening = re.match(r"^```(\S*)\s*$", line)
            if opening:
                fence, lang, first, body = opening, opening.group(1), number, []
            elif line.startswith("#"):
                heading = line.strip("# \n")
        elif line.startswith("```"):
            page = str(path.relative_to(ROOT))
            blocks.append(Block(page, first, heading, lang, "".join(body)))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"{path}: a code block opened at line {first} is never closed"
    return blocks


BLOCKS = [block for page in PAGES for block in code_blocks(page)]
PYTHON = [block for block in BLOCKS if block.lang == "python"]


def shell_commands(blocks: list[Block]) -> dict[str, str]:
    """Each command of the shell blocks -> where it first appears: continuations joined,
    comments and prompts dropped, every distinct command once across all pages."""
    commands: dict[str, str] = {}
    for block in blocks:
        if block.lang not in SHELL_BLOCKS:
            continue
        joined = re.sub(r"\\\n\s*", " ", block.body)
        lines = joined.splitlines()
        if any(line.startswith("$ ") for line in lines):  # a transcript: its output is not run
            lines = [line for line in lines if line.startswith("$ ")]
        for line in lines:
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            line = line[2:] if line.startswith("$ ") else line
            if line:
                commands.setdefault(" ".join(line.split()), block.where)
    return commands


def why_slow(command: str) -> str | None:
    """The reason `command` does not run in the tests, None when it runs."""
    return next((reason for pattern, reason in SLOW if re.search(pattern, command)), None)


def why_slow_python(block: Block) -> str | None:
    """The reason a Python block does not run in the tests, None when it runs."""
    return next((reason for pattern, reason in PY_SLOW if re.search(pattern, block.body)), None)


def inline_commands(text: str) -> list[str]:
    """Commands quoted inline in the prose (`vgg-flax ...`, `tensorboard ...`, ...) with
    arguments; their placeholders (DIR, NAME, ...) make them examples: they are parsed only."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    program = r"(\.venv/bin/)?(python3? (-m \S+|\S+\.py)|vgg-flax \S+|tensorboard|make|pip \S+)"
    spans = re.findall(r"`([^`\n]+)`", prose)
    found = [span for span in spans if re.fullmatch(program + r"\s+\S.*", span)]
    return list(dict.fromkeys(found))


SOURCES = shell_commands(BLOCKS)
COMMANDS = list(SOURCES)
QUICK = [c for c in COMMANDS if why_slow(c) is None]
LISTED = [c for c in COMMANDS if why_slow(c) is not None]
INLINE = [c for page in PAGES for c in inline_commands(page.read_text()) if c not in SOURCES]
INLINE = list(dict.fromkeys(INLINE))
RUN_PY = [b for b in PYTHON if why_slow_python(b) is None]
COMPILE_PY = [b for b in PYTHON if why_slow_python(b) is not None]


def check_readme_model(ns: dict) -> None:
    assert ns["logits"].shape == (2, 10)
    assert set(ns["feats"]) == {"relu4_2", "pool5"}
    assert ns["feats"]["pool5"].shape == (2, 1, 1, 64)


def check_models_page(ns: dict) -> None:
    assert ns["logits"].shape == (1, 1000)
    assert ns["scores"].shape == (1, 1000)
    assert ns["score_map"].shape == (1, 6, 10, 1000)
    assert set(ns["feats"]) == {"relu4_2", "pool5"}
    assert set(ns["both"]) == {"fc7", "logits"}
    assert [s.shape[1:] for s in ns["stages"]] == [
        (224, 224, 64),
        (112, 112, 128),
        (56, 56, 256),
        (28, 28, 512),
        (14, 14, 512),
    ]
    assert ns["tiny_logits"].shape == (2, 10)
    assert ns["tiny_variables"]["params"]["conv1_1"]["kernel"].shape == (3, 3, 3, 8)
    assert ns["spec"]["width"] == 0.125 and ns["spec"]["head_width"] == 32


def check_digits_data(ns: dict) -> None:
    assert ns["batch"]["image"].shape == (32, 32, 32, 3)
    assert ns["batch"]["label"].shape == (32,)
    assert ns["test"]["image"].shape == (120, 32, 32, 3) and "mask" in ns["test"]


def check_nnx_finetune(ns: dict) -> None:
    assert len(ns["losses"]) == 3 and all(np.isfinite(ns["losses"]))
    assert int(ns["optimizer"].step[...]) == 3
    assert set(ns["variables"]) == {"params", "batch_stats"}  # the demo's VGG-A has BatchNorm


# (page, heading) -> assertions on the namespace a run block leaves; every entry must match a
# block that runs (test_checks_match_blocks).
CHECKS = {
    ("README.md", "Build a model and run it"): check_readme_model,
    ("docs/models.md", "Build a model and run it"): check_models_page,
    ("docs/data.md", "Data"): check_digits_data,
    ("docs/nnx.md", "Training"): check_nnx_finetune,
}


def test_pages_have_blocks_of_every_kind():
    assert "make demo" in COMMANDS and "make test" in COMMANDS
    assert QUICK and LISTED and RUN_PY and COMPILE_PY
    assert {block.page for block in BLOCKS} >= {"README.md", "docs/models.md", "docs/data.md"}


def test_blocks_have_known_languages():
    known = (*SHELL_BLOCKS, "python", *OUTPUT_BLOCKS)
    unknown = [f"{b.where}: ```{b.lang}" for b in BLOCKS if b.lang not in known]
    assert not unknown, "add the language to this test, or use one it knows:\n" + "\n".join(unknown)


def test_checks_match_blocks():
    runs = [(b.page, b.heading) for b in RUN_PY]
    for key in CHECKS:
        assert runs.count(key) == 1, f"CHECKS names {key}, which is not exactly one run block"


def test_links_resolve():
    """Relative links of README.md and docs/*.md name files of the repository."""
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


def test_readme_lists_every_page():
    text = README.read_text()
    missing = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in text]
    assert not missing, f"README.md's documentation table lacks {missing}"


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


# Characters that make a command need a shell (pipes, redirections, expansions, quoting).
SHELL_SYNTAX = re.compile(r"[|&;<>()$`*?~{}\[\]'\"\\]|^\w+=")


def in_process(command: str) -> list[str] | None:
    """`command`'s argv when this process can run it as its own program would, else None.

    `vgg-flax ARGS` is the console script of pyproject.toml; `[.venv/bin/]python -m MODULE ARGS`
    is this environment's interpreter (the scratch checkout's .venv links to it; PATH puts its
    bin/ first) running MODULE as `python -m` does. Shell syntax needs bash (a subprocess).
    """
    if SHELL_SYNTAX.search(command):
        return None
    argv = command.split()
    if argv[0] == "vgg-flax":
        return argv
    if re.fullmatch(r"(\.venv/bin/)?python3?", argv[0]) and argv[1:2] == ["-m"] and argv[2:]:
        return argv
    return None


def exit_status(code: object) -> int:
    """The exit status of `sys.exit(code)`."""
    return 0 if code is None else code if isinstance(code, int) else 1


def run_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run `in_process`'s argv here as its program would run it; its exit status."""
    if argv[0] == "vgg-flax":
        (script,) = importlib.metadata.entry_points(group="console_scripts", name="vgg-flax")
        monkeypatch.setattr(sys, "argv", argv)

        def program():  # what the installed script does
            sys.exit(script.load()())
    else:
        module = argv[2]
        monkeypatch.setattr(sys, "argv", [module, *argv[3:]])  # runpy puts the file first
        monkeypatch.delitem(sys.modules, module, raising=False)  # executed afresh, as __main__

        def program():
            runpy.run_module(module, run_name="__main__", alter_sys=True)

    found = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=os.environ["PATH"])
    assert found, f"{argv[0]} is not on PATH"
    if argv[0] != "vgg-flax":  # the interpreter running this test
        assert os.path.samefile(found, sys.executable), f"{argv[0]} is {found}"
    try:
        program()
    except SystemExit as stop:
        return exit_status(stop.code)
    return 0


@pytest.mark.parametrize("command", QUICK)
def test_quick_command_runs(command, checkout, monkeypatch, capfd):
    """Every quick command exits 0 (its page: SOURCES[command])."""
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "VGG_FLAX_CACHE": str(checkout / "cache"),
    }
    argv = in_process(command)
    if argv is not None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(checkout)
        status = run_in_process(argv, monkeypatch)
        out, err = capfd.readouterr()
    else:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=checkout,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        status, out, err = done.returncode, done.stdout, done.stderr
    assert status == 0, f"{SOURCES[command]}: {command}\n{out[-2000:]}\n{err[-3000:]}"


@pytest.mark.parametrize("block", RUN_PY, ids=lambda b: b.where)
def test_python_block_runs(block, checkout, monkeypatch):
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("VGG_FLAX_CACHE", str(checkout / "cache"))
    namespace: dict = {"__name__": "__main__"}
    exec(compile(block.body, block.where, "exec"), namespace)
    check = CHECKS.get((block.page, block.heading))
    if check is not None:
        check(namespace)


@pytest.mark.parametrize(
    "block", COMPILE_PY, ids=lambda b: f"{b.where} ({why_slow_python(b).split(' (')[0]})"
)
def test_slow_python_compiles(block):
    """A block that cannot run still compiles, and what it imports and names exists."""
    tree = compile(block.body, block.where, "exec", ast.PyCF_ONLY_AST)
    modules = {"vgg_flax": "vgg_flax"}  # names bound to modules -> the modules' names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
                top = alias.name.split(".")[0]
                modules[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if is_module(name):
                    modules[alias.asname or alias.name] = name
                else:
                    assert hasattr(module, alias.name), f"{block.where}: {name} does not exist"
    for node in ast.walk(tree):  # vgg_flax.NAME, data.NAME, ...: attributes of modules used
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module_name = modules.get(node.value.id)
            if module_name is not None:
                module = importlib.import_module(module_name)
                assert hasattr(module, node.attr), f"{block.where}: {module_name}.{node.attr}?"


def is_module(name: str) -> bool:
    """Whether `name` names an importable module (`a.b` where a.b is a submodule, not a name)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent is a module, not a package
        return False


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
        problem = script_help_fails(argv[1])
        assert problem is None, f"{command}: --help failed: {problem}"
    elif program.startswith("python") and argv[1:3] == ["-m", "pytest"]:
        paths = [arg.split("::")[0] for arg in argv[3:] if not arg.startswith("-")]
        missing = [path for path in paths if not (ROOT / path).exists()]
        assert paths and not missing, f"{command}: no test file {missing}"
    elif program.startswith("python") and argv[1] == "-m":
        module = importlib.import_module(argv[2])
        if hasattr(module, "build_parser"):
            parse(command, module.build_parser, argv[3:])
        else:
            check_absl_flags(command, argv[2], argv[3:])
    elif program == "tensorboard":
        check_tensorboard(command, argv)
    else:
        problem = help_fails(argv[0])
        assert problem is None, f"{command}: {argv[0]} --help failed: {problem}"


@functools.cache  # a script quoted several times answers once
def script_help_fails(script: str) -> str | None:
    """Why `python SCRIPT --help` fails (None: it exits 0 with its usage), run in this process
    as `python SCRIPT` runs it: as __main__, its folder first on sys.path. What it imports from
    its folder (the benchmarks' `models`, `evaluate`) is set aside afterwards, and any module of
    this process with such a name is hidden from it meanwhile."""
    path = ROOT / script
    own = {p.stem if p.suffix == ".py" else p.name for p in path.parent.iterdir()}
    hidden = {name: sys.modules.pop(name) for name in own if name in sys.modules}
    before, saved_path, saved_argv = set(sys.modules), sys.path[:], sys.argv
    sys.path.insert(0, str(path.parent))
    sys.argv = [str(path), "--help"]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(path), run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = exit_status(stop.code)
    finally:
        sys.path[:], sys.argv = saved_path, saved_argv
        for name in set(sys.modules) - before:
            if name.split(".")[0] in own:
                del sys.modules[name]
        sys.modules.update(hidden)
    if status == 0 and "usage:" in out.getvalue():
        return None
    return f"exit {status}: {err.getvalue()[-1000:]}"


def check_tensorboard(command: str, argv: list[str]) -> None:
    """The `tensorboard` program is installed and its own parser takes the documented flags
    (tensorboard.program, which its console script runs; no server is started)."""
    assert shutil.which("tensorboard", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    from tensorboard import program

    try:
        program.TensorBoard().configure(argv=argv)
    except SystemExit as stop:
        pytest.fail(f"the docs' `{command}` does not parse (exit {stop.code})")


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
            pytest.fail(f"the docs' `{command}` does not parse (exit {stop.code})")


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
