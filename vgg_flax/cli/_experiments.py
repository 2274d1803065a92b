"""The experiments' modules (`vgg_flax.experiments`) for the `train`, `evaluate` and `reproduce`
subcommands, wherever vgg-flax runs from.

pyproject.toml installs the checkout's top-level experiments/ as the package
`vgg_flax.experiments` (package-dir), so a wheel has vgg_flax/experiments/ and an editable
install maps the name to the checkout's folder. A checkout used straight from its folder
(its root on PYTHONPATH, no install) has no such package: this module registers the
checkout's experiments/ under that name, as the install would. Located beside the imported
vgg_flax (never by searching sys.path), so another project's `experiments` is never picked up.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "vgg_flax.experiments"


def experiments_dir() -> Path:
    """The folder of `vgg_flax.experiments`: installed inside vgg_flax/, or the checkout's."""
    for folder in (installed_dir(), installed_dir().parent.parent / "experiments"):
        if (folder / "train.py").is_file() and (folder / "configs").is_dir():
            return folder
    raise RuntimeError(
        f"vgg-flax at {installed_dir().parent} has no experiments (vgg_flax/experiments/ or "
        "../experiments/); reinstall it (`pip install vgg-flax`, or in a checkout "
        "`pip install -e .`)"
    )


def installed_dir() -> Path:
    """Where a wheel puts `vgg_flax.experiments`: vgg_flax/experiments/."""
    import vgg_flax

    return Path(vgg_flax.__file__).resolve().parent / "experiments"


def experiments_module(name: str) -> ModuleType:
    """`vgg_flax.experiments.<name>` (e.g. "train"), imported from `experiments_dir()`."""
    folder = experiments_dir()
    if PACKAGE not in sys.modules and folder != installed_dir():
        # A checkout's experiments/: registered under the name an install gives it (the same
        # for an editable install, whose finder maps the name to this folder).
        spec = importlib.util.spec_from_file_location(
            PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
        sys.modules["vgg_flax"].experiments = package
    return importlib.import_module(f"{PACKAGE}.{name}")


def add_experiment_subcommand(
    subparsers: argparse._SubParsersAction, command: str, module: str, help: str
) -> None:
    """Register `vgg-flax COMMAND` as experiments/MODULE.py with that program's own options;
    running it calls the program's `main` on the arguments as typed."""
    from vgg_flax.cli import add_subcommand

    program = experiments_module(module).build_parser()
    parser = add_subcommand(
        subparsers,
        command,
        help,
        description=f"experiments/{module}.py (python -m experiments.{module}):\n\n"
        + program.description,
        parents=[program],
        conflict_handler="resolve",  # the program's -h/--help replaces this parser's own
    )
    parser.set_defaults(run=lambda args: experiments_module(module).main(args.argv))
