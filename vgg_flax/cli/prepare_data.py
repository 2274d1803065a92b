"""`vgg-flax prepare-data`: build a TFDS dataset, e.g. imagenet2012 from the ILSVRC-2012 tars.

Datasets TFDS downloads (e.g. imagenette) need their host; offline the command stops at once,
naming the URL: fetch the file elsewhere and pass its folder as --manual-dir.
"""

from __future__ import annotations

import argparse

from vgg_flax.cli import add_subcommand


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `prepare-data` subcommand."""
    parser = add_subcommand(
        subparsers,
        "prepare-data",
        "prepare a TFDS dataset (imagenet2012 from its tars in --manual-dir)",
        __doc__,
    )
    parser.add_argument("--source", default="imagenet2012", help="TFDS dataset name")
    parser.add_argument(
        "--manual-dir",
        default=None,
        help="folder with the manual files (imagenet2012: ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar; offline, the files TFDS would download, e.g. imagenette2.tgz)",
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir for the prepared dataset")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the dataset, then print its splits."""
    from vgg_flax.data.sources import prepare, tfds_source

    prepare(args.source, data_dir=args.data_dir, manual_dir=args.manual_dir)
    source = tfds_source(args.source, data_dir=args.data_dir)
    for split, size in sorted(source.split_sizes.items()):
        print(f"{args.source} {split}: {size} examples")
    return 0
