r"""Compare training runs: the curves of several workdirs in one PNG, each run labelled.

    python -m experiments.compare runs/demo runs/demo-avg --output curves.png
    python -m experiments.compare runs/a runs/b --labels max-pool avg-pool --output curves.png

A RUN is a training workdir (it holds the metrics.jsonl the trainer writes) or a metrics.jsonl
file. The panels are those of a run's own metrics.png: loss, accuracy (train batch, eval top-1
and top-5), learning rate.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file: find the repository's packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vgg_flax.cli import HelpFormatter, entry_point  # noqa: E402
from vgg_flax.train.metrics import METRICS_FILE  # noqa: E402

DEFAULT_OUTPUT = os.path.join("runs", "curves.png")


def build_parser() -> argparse.ArgumentParser:
    """The command line: RUN..., --labels, --output."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description=__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help=f"workdir or {METRICS_FILE} file")
    parser.add_argument(
        "--labels", nargs="+", default=None, help="one legend label per run (default: folder name)"
    )
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="the PNG to write (runs/ is git-ignored)"
    )
    return parser


def metrics_path(run: str) -> str:
    """The metrics.jsonl of `run` (a workdir or the file itself); ValueError naming the fix."""
    path = os.path.join(run, METRICS_FILE) if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise ValueError(
            f"{run} has no {METRICS_FILE}: give a training workdir (the --workdir of "
            "python -m experiments.train) or its metrics.jsonl"
        )
    return path


def run_labels(runs: list[str], labels: list[str] | None) -> list[str]:
    """One unique label per run: `labels` as given, else each run's folder name (its path when
    two runs share a name)."""
    if labels is not None:
        if len(labels) != len(runs) or len(set(labels)) != len(labels):
            raise ValueError(f"--labels needs {len(runs)} distinct labels, got {labels}")
        return labels
    names = [
        os.path.basename(os.path.normpath(run if os.path.isdir(run) else os.path.dirname(run)))
        or run
        for run in runs
    ]
    return names if len(set(names)) == len(names) else [os.path.normpath(run) for run in runs]


def compare(runs: list[str], output: str, labels: list[str] | None = None) -> str:
    """Plot the curves of `runs` into `output`; returns its path."""
    from vgg_flax.train.metrics import plot_runs  # matplotlib: only once there is work to do
    from vgg_flax.weights.atomic import check_output

    paths = [metrics_path(run) for run in runs]
    output = check_output(output)
    return plot_runs(dict(zip(run_labels(runs, labels), paths, strict=True)), output)


@entry_point("compare")
def main(argv: list[str] | None = None) -> int:
    """Entry point: write the PNG and say where (errors: one line, exit 2)."""
    args = build_parser().parse_args(argv)
    if args.output == DEFAULT_OUTPUT:
        os.makedirs(os.path.dirname(DEFAULT_OUTPUT), exist_ok=True)
    out = compare(args.runs, args.output, args.labels)
    print(f"wrote {out} ({len(args.runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
