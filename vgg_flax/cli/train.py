"""`vgg-flax train`: train an experiment config from any folder (`python -m experiments.train`)."""

from __future__ import annotations

import argparse

from vgg_flax.cli import add_subcommand
from vgg_flax.cli._experiments import experiments_module

OVERRIDES = """\
Any field of the config can be overridden: --config.FIELD=VALUE, repeated (e.g.
--config.batch_size=8 --config.optim.learning_rate=0.05 --config.width=0.125); every data
option is a field too: --config.data.source=folder --config.data.folder=DIR trains on your own
images (DIR/train/<class>/ and DIR/validation/<class>/, or DIR/<class>/ alone, split for you),
--config.init_from=WEIGHTS starts from weights (a fresh classifier when the class counts
differ). A run resumes from its workdir's latest checkpoint when restarted with the same one.
The configs are the files of experiments/configs/ (installed as vgg_flax/experiments/configs/);
the same run from a checkout's root: python -m experiments.train --config
experiments/configs/NAME.py --workdir DIR."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax train`; experiments/train.py runs it (absl flags, ml_collections)."""
    names = ", ".join(experiments_module("train").shipped_configs())
    parser = add_subcommand(
        subparsers,
        "train",
        "train an experiment config (a row of Table 3, or the digits demo)",
        description="Train one experiment config (experiments/train.py).\n\n" + OVERRIDES,
        pass_through=("--config.",),
        allow_abbrev=False,  # the flags go to absl as typed, and absl takes no abbreviations
    )
    parser.add_argument(
        "--config",
        required=True,
        help=f"a config file (e.g. experiments/configs/digits.py) or a shipped config: {names}; "
        "CONFIG:local is its two-step smoke run on the digits",
    )
    parser.add_argument(
        "--workdir", required=True, help="run directory: checkpoints, metrics, plot, final model"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Hand the arguments, overrides included, to experiments/train.py's `main`."""
    return experiments_module("train").main(args.argv)
