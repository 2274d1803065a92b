"""The `vgg-flax` command: one subcommand per module of this package, each with `add_parser`.

Also the one error style of every entry point (`vgg-flax` and `python -m experiments.*`,
through `entry_point`): an expected failure (bad input, a missing extra, a failed download, a
missing file) prints one line naming the fix and exits 2; `--debug` or VGG_FLAX_DEBUG=1 shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

from vgg_flax.host_memory import keep_freed_memory

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


# The extra that installs each optional top-level module (pyproject.toml's optional-dependencies).
EXTRAS = {
    "tensorflow": "data",
    "tensorflow_datasets": "data",
    "sklearn": "data",
    "importlib_resources": "data",
    "torch": "torch",
    "torchvision": "torch",
    "keras": "references",
    "h5py": "references",
    "lpips": "references",
    "piq": "references",
    "torchmetrics": "references",
    "jax2onnx": "deploy",
    "onnx": "deploy",
    "onnxruntime": "deploy",
    "qwix": "deploy",
    "tensorboard": "dev",
}
DEBUG_FLAG = "--debug"
DEBUG_ENV = "VGG_FLAX_DEBUG"
# Failures of bad input or of the environment, not of vgg-flax: one line, exit 2. ValueError is
# the package's "bad input" (every refusal names the problem and the fix); OSError covers missing
# files and failed downloads (`DownloadError` names the cache path to fill by hand).
EXPECTED = (ValueError, OSError)
_debugging = False  # set while a --debug run is in progress (a nested entry point sees it)


def missing_extra(error: BaseException) -> str | None:
    """For an import of an optional dependency that failed, the line naming the extra to install."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    module = error.name.partition(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    install = f"pip install 'vgg-flax[{extra}]'"
    return f"this needs the {extra!r} extra ({module} is not installed): {install}"


def expected_message(error: BaseException) -> str | None:
    """The one-line message of an expected failure, or None for a bug (shown with a traceback)."""
    extra = missing_extra(error)
    if extra is not None:
        return extra
    if isinstance(error, EXPECTED) and not isinstance(error, ModuleNotFoundError):
        text = " ".join(str(error).split()) or type(error).__name__
        return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"
    return None


def debug_requested(argv: Sequence[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug`, and whether tracebacks are asked for (the flag or DEBUG_ENV)."""
    argv = list(argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return [arg for arg in argv if arg != DEBUG_FLAG], debug


def entry_point(prog: str) -> Callable[[Callable[[list[str]], int]], Callable[..., int]]:
    """Decorate a program's `main(argv)` with the error style of every vgg-flax command.

    The decorated `main(argv=None)` strips `--debug`; an expected failure (`expected_message`)
    prints `PROG: error: MESSAGE` on one line and returns 2, unless debugging, when it is raised
    with its traceback. A failure that is not expected (a bug) keeps its traceback.
    """

    def decorate(main: Callable[[list[str]], int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> int:
            global _debugging
            argv, debug = debug_requested(sys.argv[1:] if argv is None else argv)
            debug, outer = debug or _debugging, _debugging
            _debugging = debug
            keep_freed_memory()  # XLA:CPU's large buffers reused, not mapped afresh each step
            try:
                return int(main(argv) or 0)
            except Exception as error:
                message = expected_message(error)
                if message is None or debug:
                    raise
                print(f"{prog}: error: {message} (--debug shows where)", file=sys.stderr)
                return 2
            finally:
                _debugging = outer

        return wrapped

    return decorate


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows the defaults worth showing and keeps descriptions as written.

    An option whose help already says its default ("default: ...", "none: ...") or whose default
    is None or False (an unset option, a plain flag) gets no "(default: ...)" appended.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        unset = action.default is None or action.default is False  # not 0, which == False
        if unset or "default" in help.lower():
            return help
        return super()._get_help_string(action)


def suggestion(unknown: str, parser: argparse.ArgumentParser) -> str:
    """ " (did you mean --x?)" for an unknown option close to one of `parser`'s, else ""."""
    name = unknown.partition("=")[0]
    options = [o for action in parser._actions for o in action.option_strings]
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: argparse, plus what a subcommand that wraps a program needs.

    It records the arguments it was given (`args.argv`), so a wrapper hands them to the program's
    own `main(argv)` as typed, and it accepts options starting with one of `pass_through` unseen
    (`--config.FIELD=VALUE`: absl's config overrides, which no argparse option can name in
    advance; the program parses them from `args.argv`)."""

    def __init__(self, *args, pass_through: tuple[str, ...] = (), **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --weight is not --weights
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
        if extras:  # here, so that the message shows this subcommand's usage, not the top one's
            self.error(f"unrecognized arguments: {' '.join(extras)}{suggestion(extras[0], self)}")
        namespace.argv = args
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vgg-flax",
        description="The VGG networks in JAX/Flax: summary, weight conversion, parity, data, "
        "prediction, and the paper's experiments (train, evaluate, reproduce).",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        epilog=f"{DEBUG_FLAG} (anywhere) or {DEBUG_ENV}=1: show the traceback of a failure.",
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
    """Entry point of the console script (errors: `entry_point`'s style)."""
    argv, debug = debug_requested(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    run = entry_point(f"vgg-flax {args.command}")(lambda _: args.run(args))
    return run([DEBUG_FLAG] if debug else [])


if __name__ == "__main__":
    sys.exit(main())
