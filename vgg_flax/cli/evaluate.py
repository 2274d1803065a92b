"""`vgg-flax evaluate`: experiments/evaluate.py (`python -m experiments.evaluate`), anywhere."""

from __future__ import annotations

import argparse

from vgg_flax.cli import add_subcommand
from vgg_flax.cli._experiments import experiments_module


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax evaluate` with experiments/evaluate.py's own options."""
    program = experiments_module("evaluate").build_parser()
    parser = add_subcommand(
        subparsers,
        "evaluate",
        "top-1/top-5 error of checkpoints with the paper's test protocols",
        description="experiments/evaluate.py (python -m experiments.evaluate):\n\n"
        + program.description,
        parents=[program],
        conflict_handler="resolve",  # the program's -h/--help replaces this parser's own
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run experiments/evaluate.py's `main` on the arguments as typed."""
    return experiments_module("evaluate").main(args.argv)
