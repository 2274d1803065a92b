"""The `vgg-flax` command: one subcommand per module of this package, each with `add_parser`."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import version
from typing import Any

# Modules that register a subcommand; imported lazily so `vgg-flax summary` stays light.
SUBCOMMAND_MODULES = (
    "vgg_flax.cli.summary",
    "vgg_flax.cli.convert",
    "vgg_flax.cli.parity",
    "vgg_flax.cli.prepare_data",
    "vgg_flax.cli.predict",
    "vgg_flax.cli.features",
    "vgg_flax.cli.probe",
    "vgg_flax.cli.similarity",
    "vgg_flax.cli.export",
    "vgg_flax.cli.train",
    "vgg_flax.cli.evaluate",
    "vgg_flax.cli.reproduce",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps descriptions as written."""


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: argparse, plus what a subcommand that wraps a program needs.

    It records the arguments it was given (`args.argv`), so a wrapper hands them to the program's
    own `main(argv)` as typed, and it accepts options starting with one of `pass_through` unseen
    (`--config.FIELD=VALUE`: absl's config overrides, which no argparse option can name in
    advance; the program parses them from `args.argv`)."""

    def __init__(self, *args, pass_through: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pass_through = pass_through

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, minus the `pass_through` options; `argv` (all of `args`) added."""
        args = sys.argv[1:] if args is None else list(args)
        kept, tokens = [], iter(args)
        for arg in tokens:
            if not self.pass_through or not arg.startswith(self.pass_through):
                kept.append(arg)
            elif "=" not in arg:  # `--config.field VALUE`, or a boolean `--config.flag`
                value = next(tokens, None)
                if value is not None and value.startswith("-"):
                    kept.append(value)
        namespace, extras = super().parse_known_args(kept, namespace)
        namespace.argv = args
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vgg-flax",
        description="The VGG networks in JAX/Flax: summary, weight conversion, parity, data, "
        "prediction, and the paper's experiments (train, evaluate, reproduce).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('vgg-flax')}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=SubcommandParser)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def add_subcommand(
    subparsers: argparse._SubParsersAction,
    name: str,
    help: str,
    description: str | None = None,
    **kwargs: Any,
) -> SubcommandParser:
    """A subcommand parser with the shared formatter (defaults shown in --help).

    `kwargs` go to `SubcommandParser` (e.g. `parents`, `pass_through`)."""
    return subparsers.add_parser(
        name, help=help, description=description or help, formatter_class=HelpFormatter, **kwargs
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
