r"""Evaluate checkpoints with the paper's test protocols; print top-1/top-5 error, write JSON.

    python -m experiments.evaluate --checkpoint vgg16-397923af.pth --protocol dense \
        --scales 256 384 512 --dataset imagenet2012 --manual-dir ~/imagenet --output d.json

Several `--checkpoint`s form an ensemble (posteriors averaged). Checkpoints are vgg-flax
directories or torchvision `.pth` files (arch inferred from the tensors' shapes, or `--arch`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

from vgg_flax import preprocessing
from vgg_flax.atomic import atomic_write, check_output
from vgg_flax.cli import HelpFormatter
from vgg_flax.evaluate.protocols import PROTOCOLS


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m experiments.evaluate`."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.evaluate", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--checkpoint", nargs="+", required=True, help="dirs or .pth files")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="dense", help="test protocol")
    parser.add_argument(
        "--scales",
        nargs="+",
        type=int,
        default=[preprocessing.TORCHVISION_RESIZE],
        help="test scales Q (center: the resize before the 224 crop)",
    )
    parser.add_argument("--no-flips", action="store_true", help="skip horizontal flips")
    add_dataset_options(parser)
    parser.add_argument(
        "--align", type=int, default=32, help="pad sides to multiples of this (fewer shapes)"
    )
    parser.add_argument("--output", default=None, help="JSON result file")
    return parser


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """The options evaluate and reproduce_tables share: weights, dataset, input, batching."""
    parser.add_argument(
        "--arch", help="architecture of .pth files (e.g. vgg16); none: inferred from the shapes"
    )
    parser.add_argument("--dataset", default="imagenet2012", help="digits, folder or a TFDS name")
    parser.add_argument("--split", default=None, help="none: the dataset's evaluation split")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir")
    parser.add_argument("--manual-dir", default=None, help="folder with ILSVRC2012 tars")
    parser.add_argument("--folder", default=None, help="dataset=folder: folder/<split>/<class>/")
    parser.add_argument(
        "--normalize",
        choices=("mean_rgb", "torchvision", "caffe"),
        help="input normalisation; none: what the checkpoints record (.pth files: torchvision; "
        ".h5/.caffemodel: caffe), else mean_rgb",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="evaluate the first N images (none: all)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch at 224x224")


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The data config overrides the arguments name."""
    options: dict[str, Any] = {
        "source": args.dataset,
        "normalize": normalization(args.checkpoint, args.normalize),
        "on_corrupt": "error",
    }
    for key in ("data_dir", "manual_dir", "folder"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def normalization(checkpoints: list[str], flag: str | None) -> str:
    """The input normalisation: the one the checkpoints record, unless `flag` says otherwise.

    Checkpoints without a record (older vgg-flax directories) default to "mean_rgb"; a flag
    that contradicts a record is used, with a warning.
    """
    from vgg_flax.data.config import NORMALIZE_MODES
    from vgg_flax.loader import recorded_preprocessing

    recorded = {path: recorded_preprocessing(path) for path in checkpoints}
    known = {value for value in recorded.values() if value is not None}
    unusable = known - set(NORMALIZE_MODES)
    if flag is None and unusable:
        raise ValueError(
            f"the checkpoints expect preprocessing {sorted(unusable)}, which the evaluation "
            f"pipeline does not implement; pass --normalize (one of {', '.join(NORMALIZE_MODES)})"
        )
    if flag is None and len(known) > 1:
        raise ValueError(
            f"the checkpoints record different preprocessing ({recorded}); an ensemble needs one: "
            "pass --normalize to choose"
        )
    if flag is not None:
        if known - {flag}:
            warnings.warn(
                f"--normalize {flag} overrides the preprocessing the checkpoints record "
                f"({recorded}); expect worse accuracy if they were trained otherwise",
                stacklevel=2,
            )
        return flag
    return known.pop() if known else "mean_rgb"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as `args` say; returns the JSON result (also written to `args.output`)."""
    from tqdm import tqdm

    from vgg_flax import data
    from vgg_flax.evaluate import runner

    if args.output:  # refused now, not after the whole evaluation
        check_output(args.output)
    scales = args.scales or [preprocessing.TORCHVISION_RESIZE]
    data_config = data.default_config(**data_options(args))
    scorers = [runner.load_network(path, args.arch) for path in args.checkpoint]
    result = runner.evaluate_dataset(
        scorers,
        data_config,
        protocol=args.protocol,
        scales=scales,
        flips=not args.no_flips,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        align=args.align,
        progress=lambda it, total: tqdm(it, total=total, desc=args.protocol, unit="img"),
    )
    result = {
        "checkpoints": [os.path.abspath(p) for p in args.checkpoint],
        "dataset": args.dataset,
        "split": args.split or data_config.eval_split,
        **result,
    }
    if args.output:
        with atomic_write(args.output, "w") as f:  # never a half-written result
            json.dump(result, f, indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the errors and the JSON result."""
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except ValueError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{result['protocol']} at Q={result['scales']}: top-1 error {result['top1_error']:.2f}%, "
        f"top-5 error {result['top5_error']:.2f}% on {result['examples']} images "
        f"({result['compiled_shapes']} compiled shapes)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
