"""`vgg-flax evaluate`: experiments/evaluate.py (`python -m experiments.evaluate`), anywhere."""

from __future__ import annotations

import argparse

from vgg_flax.cli._experiments import add_experiment_subcommand


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax evaluate` with experiments/evaluate.py's own options."""
    add_experiment_subcommand(
        subparsers,
        "evaluate",
        "evaluate",
        "top-1/top-5 error of checkpoints with the paper's test protocols",
    )
