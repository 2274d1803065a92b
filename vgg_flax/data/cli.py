"""`vgg-flax prepare-data`: build a TFDS dataset, e.g. imagenet2012 from the ILSVRC-2012 tars."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `prepare-data` subcommand."""
    parser = subparsers.add_parser(
        "prepare-data",
        help="prepare a TFDS dataset (imagenet2012 from its tars in --manual_dir)",
        description=__doc__,
    )
    parser.add_argument("--source", default="imagenet2012", help="TFDS dataset name")
    parser.add_argument(
        "--manual_dir",
        default=None,
        help="folder with the manual files (imagenet2012: ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar)",
    )
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir for the prepared dataset")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the dataset, then print its splits."""
    from vgg_flax.data.sources import prepare, tfds_source

    prepare(args.source, data_dir=args.data_dir, manual_dir=args.manual_dir)
    source = tfds_source(args.source, data_dir=args.data_dir)
    for split, size in sorted(source.split_sizes.items()):
        print(f"{args.source} {split}: {size} examples")
    return 0
