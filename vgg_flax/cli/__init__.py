"""The `vgg-flax` command: one subcommand per module of this package, each with `add_parser`."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import version

# Modules that register a subcommand; imported lazily so `vgg-flax summary` stays light.
SUBCOMMAND_MODULES = (
    "vgg_flax.cli.summary",
    "vgg_flax.cli.convert",
    "vgg_flax.cli.parity",
    "vgg_flax.cli.prepare_data",
    "vgg_flax.cli.predict",
    "vgg_flax.cli.export",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps descriptions as written."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vgg-flax",
        description="The VGG networks in JAX/Flax: summary, weight conversion, parity, data, "
        "prediction.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('vgg-flax')}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def add_subcommand(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter (defaults shown in --help)."""
    return subparsers.add_parser(
        name, help=help, description=description or help, formatter_class=HelpFormatter
    )


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
