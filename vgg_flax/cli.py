"""The `vgg-flax` command. Each subcommand lives in its own module with `add_parser`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that register a subcommand; imported lazily so `vgg-flax summary` stays light.
SUBCOMMAND_MODULES = (
    "vgg_flax.summary",
    "vgg_flax.demo",
    "vgg_flax.convert",
    "vgg_flax.parity",
    "vgg_flax.data.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="vgg-flax", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ValueError as error:  # bad input: say what and how to fix it, no traceback
        print(f"vgg-flax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
