"""`vgg-flax summary`: the table of all twelve networks, their sizes and their cost."""

from __future__ import annotations

import argparse

from vgg_flax.cli import add_subcommand
from vgg_flax.models.summary import format_table, summary_rows


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax summary`."""
    parser = add_subcommand(subparsers, "summary", "table of all 12 networks: parameters, MACs")
    parser.add_argument("--size", type=int, default=224, help="input side for MACs")
    parser.add_argument(
        "--num-classes", type=int, default=1000, help="outputs of fc8 (parameters of the head)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary table."""
    print(format_table(summary_rows(args.size, args.num_classes), args.size))
    return 0
