"""`vgg-flax reproduce`: experiments/reproduce_tables.py (the paper's Tables 3-6), anywhere."""

from __future__ import annotations

import argparse

from vgg_flax.cli import add_subcommand
from vgg_flax.cli._experiments import experiments_module


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax reproduce` with experiments/reproduce_tables.py's own options."""
    program = experiments_module("reproduce_tables").build_parser()
    parser = add_subcommand(
        subparsers,
        "reproduce",
        "the paper's Tables 3-6 from checkpoints, beside its numbers",
        description="experiments/reproduce_tables.py (python -m experiments.reproduce_tables):\n\n"
        + program.description,
        parents=[program],
        conflict_handler="resolve",  # the program's -h/--help replaces this parser's own
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run experiments/reproduce_tables.py's `main` on the arguments as typed."""
    return experiments_module("reproduce_tables").main(args.argv)
