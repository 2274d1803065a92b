"""Root conftest: torch before TensorFlow, markers for the extras a test needs, big tests first,
and JAX's persistent compilation cache for the test process and the processes it starts.

Importing torchvision after TensorFlow segfaults on this stack (docs/environment.md): when torch
and torchvision are installed, they are imported here, before any test module can load
TensorFlow. Without them, the tests that need them are deselected by marker:
`pytest -m "not torch"` runs in an environment without the torch extra.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from pathlib import Path

import pytest

from vgg_flax import host_memory


def _installed(name: str) -> bool:
    """Whether top-level module `name` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


# Before anything that might load TensorFlow (see the module docstring).
if _installed("torch"):
    import torch  # noqa: F401
if _installed("torchvision"):
    import torchvision  # noqa: F401

# Marker -> the modules whose import means a test needs it: third-party packages, and the
# vgg_flax modules that import them at module level. A test that needs an extra only through a
# call (the CLI's `parity`, a subprocess) carries the marker explicitly (`pytest.mark.torch`).
NEEDS = {
    "torch": ("torch", "torchvision", "lpips", "torchmetrics", "piq", "vgg_flax.parity.training"),
    "tensorflow": (
        "tensorflow",
        "tensorflow_datasets",
        "tensorboard",  # installed with TensorFlow
        "vgg_flax.data.pipeline",
        "vgg_flax.data.preprocess",
        "vgg_flax.data.sources",
        "vgg_flax.data.stats",
    ),
    "keras": ("keras", "h5py"),
}
# The packages each marker stands for (what `pip install -e '.[...]'` brings).
PACKAGES = {
    "torch": ("torch", "torchvision"),
    "tensorflow": ("tensorflow", "tensorflow_datasets"),
    "keras": ("keras", "h5py"),
}
# Session fixtures (tests/conftest.py) that need an extra: the digits run reads TFDS data.
FIXTURE_NEEDS = {"digits_run": ("tensorflow",)}
# Documented commands (tests/test_readme.py's `command` parameter) by the program they run.
PROGRAM_NEEDS = {"tensorboard": ("tensorflow",)}
TESTS = Path(__file__).parent / "tests"


def pytest_configure(config: pytest.Config) -> None:
    """Point JAX's persistent compilation cache at one folder for this run and its children.

    Every test process (and every process a test starts) compiles the same small nets again;
    with the cache, the second compile of a program is a file read. The folder is
    $VGG_FLAX_COMPILE_CACHE or the pytest cache's `jax-compile/`; JAX_COMPILATION_CACHE_DIR in
    the environment hands it to subprocesses (JAX reads it at start-up).
    """
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    folder = os.environ.get("VGG_FLAX_COMPILE_CACHE") or str(
        cache.mkdir("jax-compile")
        if cache is not None
        else Path(config.rootpath, ".pytest_cache", "jax-compile")
    )
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", folder)
    # Cache every program, however quick to compile: the suite's many small programs add up.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # Large buffers reused rather than mapped afresh (vgg_flax/host_memory.py): here, and in
    # every process a test starts, through glibc's environment variables.
    for name, value in host_memory.ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    host_memory.keep_freed_memory()
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@functools.cache
def _imports(path: Path) -> frozenset[str]:
    """Every module a test file imports (anywhere in it), with the test helpers it imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    for name in list(names):
        helper = TESTS / f"{name}.py"  # train_runner, train_tiny, ...
        if "." not in name and helper.is_file() and helper != path:
            names |= _imports(helper)
    return frozenset(names)


def _needs(path: Path) -> list[str]:
    """The markers a test file needs by its imports (see NEEDS)."""
    imported = _imports(path)

    def covers(prefix: str) -> bool:
        return any(name == prefix or name.startswith(prefix + ".") for name in imported)

    return [marker for marker, modules in NEEDS.items() if any(map(covers, modules))]


def _missing(markers: list[str]) -> list[str]:
    return [p for marker in markers for p in PACKAGES[marker] if not _installed(p)]


class MissingExtra(pytest.Item):
    """Stands for a test file that cannot be imported here: it fails unless deselected."""

    def __init__(self, *, missing: list[str], **kwargs):
        super().__init__(**kwargs)
        self.missing = missing

    def runtest(self) -> None:
        raise pytest.fail.Exception(
            f"{self.path.name} needs {', '.join(self.missing)}, not installed: install the "
            f"extras (pip install -e '.[dev]') or deselect it, e.g. -m 'not torch'",
            pytrace=False,
        )

    def reportinfo(self):
        return self.path, None, f"{self.path.name} (not importable)"


class UnimportableModule(pytest.File):
    """A test file whose imports need packages this environment lacks."""

    def collect(self):
        markers = _needs(self.path)
        item = MissingExtra.from_parent(self, name="needs-extras", missing=_missing(markers))
        for marker in markers:
            item.add_marker(marker)
        yield item


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector):
    """Do not import a test file that needs a missing extra; collect a stand-in instead."""
    if _missing(_needs(module_path)):
        return UnimportableModule.from_parent(parent, path=module_path)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the extras it needs; run `big_memory` tests first.

    The float64 parity runs of full-width nets peak at 8-13 GB each; after the rest of the suite
    this process holds several GB more, too much beside them on a 24 GB machine.
    """
    for item in items:
        markers = set(_needs(item.path)) if item.path.suffix == ".py" else set()
        for fixture, needed in FIXTURE_NEEDS.items():
            if fixture in getattr(item, "fixturenames", ()):
                markers.update(needed)
        command = getattr(item, "callspec", None) and item.callspec.params.get("command")
        if isinstance(command, str) and command.split():
            markers.update(PROGRAM_NEEDS.get(os.path.basename(command.split()[0]), ()))
        for marker in sorted(markers - {m.name for m in item.iter_markers()}):
            item.add_marker(marker)
    items.sort(key=lambda item: item.get_closest_marker("big_memory") is None)


@pytest.fixture(scope="module", autouse=True)
def _free_disk_after_each_file(request, tmp_path_factory):
    """After each test file that passed, delete the folders its module fixtures made.

    Full-width checkpoints are half a gigabyte each; kept to the session's end they add up to
    more than a CI disk holds. The session-wide digits run is kept, and so is everything of a
    file with a failure, to look at.
    """
    import shutil

    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed != failed:
        return
    for path in set(base.iterdir()) - before:
        if path.is_dir() and not path.name.startswith("digits_run"):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _free_memory_after_each_file():
    """After each test file, drop JAX's compiled programs and traces and collect garbage.

    A pytest-xdist worker runs dozens of files; what they leave behind adds up to gigabytes,
    and two such workers beside a big test outgrow a 24 GB machine. A program needed again is
    read back from the persistent compilation cache. What survives the collection (the imported
    libraries, session fixtures: most of a worker's ~800,000 objects) is frozen, so later
    collections, these and Python's own, no longer walk it (seconds per file otherwise).
    """
    yield
    import gc
    import sys

    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    gc.collect()
    gc.freeze()
