"""Train one experiment config: `python -m experiments.train --config CONFIG --workdir DIR`.

The same from any folder: `vgg-flax train --config CONFIG --workdir DIR`. CONFIG is a config
file (`experiments/configs/digits.py`) or the name of a shipped one (`digits`, `a_256`: the files
of experiments/configs/); `CONFIG:local` selects its local mode (a two-step smoke run). Any field
can be overridden on the command line (`--config.batch_size=64`,
`--config.optim.learning_rate=0.05`). A run resumes from DIR's latest checkpoint when restarted
with the same DIR.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (input pipeline only): quiet

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vgg_flax.cli import entry_point  # noqa: E402

# The shipped configs: beside this file, in a checkout (experiments/configs/) and installed
# (vgg_flax/experiments/configs/, pyproject.toml's package-dir), so a name works from any folder.
CONFIGS = Path(__file__).resolve().parent / "configs"
HELP_FLAGS = ("-h", "--help", "--helpshort")


def shipped_configs() -> list[str]:
    """The names `--config` accepts besides file paths (a_256, ..., digits)."""
    return sorted(path.stem for path in CONFIGS.glob("*.py") if path.stem != "__init__")


def resolve_config(spec: str) -> str:
    """`--config`'s value as a file path: a file as given, else a shipped config's file.

    The `:mode` suffix (`digits:local`) is kept; ml_collections splits it off the same way."""
    path, colon, mode = spec.partition(":")
    if os.path.isfile(path):
        return spec
    if path in shipped_configs():
        return f"{CONFIGS / path}.py{colon}{mode}"
    raise ValueError(
        f"config {path!r} is neither a file nor a shipped config; give a config file's path or "
        f"one of {', '.join(shipped_configs())}"
    )


def define_flags(argv: Sequence[str] = ()) -> flags.FlagValues:
    """This script's absl flags, in a flag set of their own, for the arguments `argv`.

    Not absl's global FLAGS: a process that imports this module twice (as `experiments.train`
    and as `vgg_flax.experiments.train`) or runs it twice would define them twice. The config's
    override flags (`--config.FIELD`) are found in `argv` (ml_collections would read sys.argv,
    which an in-process `main(argv)` does not set)."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "config file or shipped config name (e.g. digits)",
        flag_values=values,
        sys_argv=["train", *argv],
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "run directory: checkpoints, metrics, plot, final model",
        flag_values=values,
    )
    flags.mark_flags_as_required(["config", "workdir"], flag_values=values)
    return values


def with_config_resolved(argv: Sequence[str]) -> list[str]:
    """`argv` with `--config`'s value made a file path (`resolve_config`); the rest unchanged."""
    resolved, tokens = [], iter(argv)
    for arg in tokens:
        if arg == "--config":
            value = next(tokens, None)
            resolved += [arg] if value is None else [arg, resolve_config(value)]
        elif arg.startswith("--config="):
            resolved.append("--config=" + resolve_config(arg.removeprefix("--config=")))
        else:
            resolved.append(arg)
    return resolved


def summary_lines(summary: dict) -> list[str]:
    """The end-of-run summary as a few readable lines."""
    evaluation = summary.get("eval") or {}
    lines = [
        f"steps {summary['step']}/{summary['total_steps']} ({summary['epochs']:.1f} epochs) "
        f"in {summary['wall_s']:.0f} s, {summary['images_per_s']:.1f} images/s at the end",
        f"learning rate drops: {summary['learning_rate_drops']}, "
        f"final rate {summary['final_learning_rate']:g}",
    ]
    if evaluation:
        lines.append(
            f"eval: top-1 accuracy {evaluation['accuracy']:.4f}, top-5 {evaluation['top5']:.4f}, "
            f"cross-entropy {evaluation['loss']:.4f} on {evaluation['examples']:.0f} images"
        )
    lines.append(
        f"workdir {summary['workdir']}: model/, checkpoints/, metrics.jsonl, tb/, "
        "metrics.png, summary.json"
    )
    return lines


def print_help(values: flags.FlagValues) -> None:
    """The usage and this script's flags (absl's --help would exit with status 1)."""
    print(__doc__)
    print("flags:")
    for name in ("config", "workdir"):
        print(f"  --{name}: {values[name].help}")
    print("  --config.FIELD=VALUE: override a field of the config (repeatable)")
    print("shipped configs:", ", ".join(shipped_configs()))


@entry_point("train")
def main(argv: Sequence[str]) -> int:
    """Train as `argv` (the flags, without the program's name) says; print the run's summary.

    Bad flags (a missing --config, an unknown config field) exit 2 with absl's message; bad
    config values, a missing extra or file, one line (`vgg_flax.cli.entry_point`)."""
    argv = list(argv)
    values = define_flags(argv)
    if any(arg in HELP_FLAGS for arg in argv):
        print_help(values)
        return 0
    try:
        values(["train", *with_config_resolved(argv)])
    except (flags.Error, ValueError) as error:
        print(f"train: error: {error}", file=sys.stderr)
        return 2
    except AttributeError as error:  # ml_collections' answer to an override of a missing field
        cause = error.args[0] if error.args else error  # a KeyError with a did-you-mean
        detail = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        detail = " ".join(str(detail).split())  # ml_collections' did-you-mean: one line
        print(f"train: error: a --config.FIELD override: no field {detail}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    from vgg_flax.train.trainer import train

    summary = train(values.config, values.workdir)
    print("\n".join(summary_lines(summary)))
    print(json.dumps(summary["eval"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
