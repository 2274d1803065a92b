r"""The grid of the paper's Tables 3-6 for given checkpoints, in markdown beside the paper's errors.

    python -m experiments.reproduce_tables --checkpoint runs/d_256/model@256 \
        --checkpoint runs/d_jitter/model@256-512 --dataset imagenet2012 --manual-dir ~/imagenet \
        --output tables.md

Each checkpoint is `PATH@S` with its training scale S (`256`, `384`, or `256-512` for scale
jittering; default 256). Per checkpoint three passes are run: dense at Table 3's single test
scale, dense and multi-crop at Table 4's test scales. Table 5's "dense+multicrop" averages the last
two posteriors, and Table 6 averages every checkpoint's dense+multicrop posteriors (an ensemble),
exactly what those protocols compute, without re-running the nets. The paper's numbers come from
`experiments/paper_results.py`. A net trained on crops under 224 (its checkpoint records its input
size, e.g. 32 for the digits) is tested at the paper's scales Q shrunk in proportion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file (python experiments/reproduce_tables.py)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "experiments"  # PEP 366: the relative imports below work as under -m

# Light imports only: JAX and TensorFlow load after the arguments are parsed (fast --help).
import numpy as np  # noqa: E402

from vgg_flax import preprocessing
from vgg_flax.cli import HelpFormatter, entry_point  # noqa: E402
from vgg_flax.models import arch  # noqa: E402
from vgg_flax.weights.atomic import atomic_write  # noqa: E402

# Relative: this package is `experiments` in a checkout and `vgg_flax.experiments` installed.
from . import paper_results  # noqa: E402
from .evaluate import add_dataset_options, data_options  # noqa: E402

Scale = int | tuple[int, int]
Posteriors = dict[int, tuple[int, np.ndarray]]


def parse_checkpoint(spec: str) -> tuple[str, Scale]:
    """`PATH@S` -> (PATH, S): S is an int, or (Smin, Smax) written `Smin-Smax`."""
    path, _, scale = spec.rpartition("@") if "@" in spec else (spec, "", "256")
    try:
        low, _, high = scale.partition("-")
        parsed: Scale = (int(low), int(high)) if high else int(low)
    except ValueError:
        raise ValueError(
            f"bad training scale {scale!r} in {spec!r}; write PATH@256, PATH@384 or PATH@256-512"
        ) from None
    return path, parsed


def scale_text(scale: Scale) -> str:
    """S as the paper prints it: 256 or [256,512]."""
    return f"[{scale[0]},{scale[1]}]" if isinstance(scale, tuple) else str(scale)


def combine(runs: Sequence[Posteriors]) -> Posteriors:
    """The mean posterior of several runs over the same examples (labels must agree)."""
    out: Posteriors = {}
    for index in runs[0]:
        labels = {run[index][0] for run in runs}
        if len(labels) != 1:
            raise ValueError(f"runs disagree on the label of example {index}")
        out[index] = (labels.pop(), np.mean([run[index][1] for run in runs], axis=0))
    return out


def errors(posteriors: Posteriors) -> dict[str, float]:
    """Top-1/top-5 error (%) of index -> (label, posterior)."""
    from vgg_flax.evaluate.metrics import TopKCounts

    labels = np.array([label for label, _ in posteriors.values()])
    scores = np.stack([p for _, p in posteriors.values()])
    return TopKCounts().add(scores, labels).errors()


def paper_row(
    table: int, nets: tuple[str, ...], scale: Scale, scales: tuple[int, ...], protocol: str
) -> paper_results.PaperResult | None:
    """The paper's row for this setting, if the paper reports one."""
    for row in paper_results.PAPER_RESULTS:
        if (row.table, row.archs, row.train_scale, row.test_scales, row.protocol) == (
            table,
            nets,
            scale,
            scales,
            protocol,
        ):
            return row
    return None


def markdown(rows: list[dict[str, Any]], examples: int) -> str:
    """The result grid as a markdown table beside the paper's numbers."""
    lines = [
        f"Top-1 / top-5 error (%) on {examples} images; the paper's on ILSVRC-2012 validation "
        "(50,000 images).",
        "",
        "| Table | Net | train S | test Q | protocol | top-1 | top-5 | paper top-1 | paper top-5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = row["paper"]
        theirs = (f"{paper.top1:.1f}", f"{paper.top5:.1f}") if paper else ("-", "-")
        lines.append(
            f"| {row['table']} | {row['net']} | {row['train_scale']} | {row['test_scales']} | "
            f"{row['protocol']} | {row['top1']:.1f} | {row['top5']:.1f} | {theirs[0]} | "
            f"{theirs[1]} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m experiments.reproduce_tables`."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.reproduce_tables",
        description=__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--checkpoint", action="append", required=True, help="PATH@S, repeated")
    add_dataset_options(parser)
    parser.add_argument("--output", default="tables.md", help="markdown file (JSON beside it)")
    return parser


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Evaluate the grid; write markdown and JSON; return the rows."""
    from tqdm import tqdm

    from vgg_flax import data
    from vgg_flax.evaluate import runner
    from vgg_flax.evaluate.protocols import view_size
    from vgg_flax.train.trainer import initialize_distributed
    from vgg_flax.weights.loading import load

    # On several hosts (JAX_COORDINATOR_ADDRESS etc.) each host scores its slice of the split;
    # every host gets the whole split's posteriors, so all write the same tables.
    initialize_distributed()
    specs = [parse_checkpoint(spec) for spec in args.checkpoint]
    args.checkpoint = [path for path, _ in specs]
    loaded = [load(path, args.arch, head="keep") for path in args.checkpoint]
    # The usage records set the input preprocessing (one for the whole grid) and size.
    data_config = data.default_config(**data_options(args, [n.usage for n in loaded]))
    rows: list[dict[str, Any]] = []
    both_runs: list[Posteriors] = []
    nets: list[str] = []
    examples = 0

    def add(table, net, archs, scale, scales, protocol, posteriors):
        result = errors(posteriors)
        row = paper_row(table, archs, scale, tuple(scales), protocol)
        rows.append(
            {
                "table": table,
                "net": net,
                "train_scale": scale_text(scale),
                "test_scales": ",".join(map(str, scales)),
                "protocol": protocol,
                "top1": result["top1"],
                "top5": result["top5"],
                "paper": row,
            }
        )

    for network, (_, scale) in zip(loaded, specs, strict=True):
        scorer = runner.load_network(network, input_size=args.input_size)
        # A net trained below 224 (e.g. on 32x32 digits) is tested at proportionally smaller Q.
        shrink = view_size([scorer]) / preprocessing.CROP_SIZE
        net = arch.arch_label(scorer.model.arch) + ("-BN" if scorer.model.batch_norm else "")
        nets.append(net)
        passes = {}
        for name, protocol, scales in (
            ("single", "dense", paper_results.single_test_scale(scale)),
            ("dense", "dense", paper_results.multi_test_scales(scale)),
            ("multicrop", "multicrop", paper_results.multi_test_scales(scale)),
        ):
            posteriors: Posteriors = {}
            result = runner.evaluate_dataset(
                [scorer],
                data_config,
                protocol=protocol,
                scales=[round(q * shrink) for q in scales],
                split=args.split,
                limit=args.limit,
                batch_size=args.batch_size,
                progress=lambda it, n, d=f"{net} {name}": tqdm(it, total=n, desc=d, unit="img"),
                posteriors=posteriors,
            )
            examples = result["examples"]
            passes[name] = posteriors
        multi = paper_results.multi_test_scales(scale)
        key = (net,)  # "-BN" nets have no row in the paper
        add(3, net, key, scale, paper_results.single_test_scale(scale), "dense", passes["single"])
        add(4, net, key, scale, multi, "dense", passes["dense"])
        both = combine([passes["dense"], passes["multicrop"]])
        for protocol, posteriors in (
            ("dense", passes["dense"]),
            ("multicrop", passes["multicrop"]),
            ("dense+multicrop", both),
        ):
            add(5, net, key, scale, multi, protocol, posteriors)
        both_runs.append(both)
        del scorer, passes
    if len(both_runs) > 1:
        scale = specs[0][1] if len({s for _, s in specs}) == 1 else "mixed"
        scales = paper_results.multi_test_scales(specs[0][1])
        ensemble = combine(both_runs)
        add(6, "+".join(nets), tuple(nets), scale, scales, "dense+multicrop", ensemble)

    rows.sort(key=lambda row: row["table"])  # stable: checkpoints keep their order per table
    text = markdown(rows, examples)
    with atomic_write(args.output, "w") as f:
        f.write(text)
    serialisable = [
        {**row, "paper": row["paper"] and {"top1": row["paper"].top1, "top5": row["paper"].top5}}
        for row in rows
    ]
    json_path = os.path.splitext(args.output)[0] + ".json"
    with atomic_write(json_path, "w") as f:
        json.dump({"examples": examples, "rows": serialisable}, f, indent=2)
    print(text)
    return rows


@entry_point("reproduce_tables")
def main(argv: list[str] | None = None) -> int:
    """Entry point (errors: one line, exit 2)."""
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
