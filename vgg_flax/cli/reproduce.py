"""`vgg-flax reproduce`: experiments/reproduce_tables.py (the paper's Tables 3-6), anywhere."""

from __future__ import annotations

import argparse

from vgg_flax.cli._experiments import add_experiment_subcommand


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax reproduce` with experiments/reproduce_tables.py's own options."""
    add_experiment_subcommand(
        subparsers,
        "reproduce",
        "reproduce_tables",
        "the paper's Tables 3-6 from checkpoints, beside its numbers",
    )
