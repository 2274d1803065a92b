"""`vgg-flax features IMAGES --weights W --out feats.npz`: the paper's Appendix B descriptors.

Each image is applied densely at every test scale Q, the relu7 map averaged over space and with
its horizontal flip, the scales averaged or stacked, and the result L2-normalised
(`vgg_flax.transfer.descriptors`). A folder with class subfolders (root/<class>/<image>) gives
labels too. Finished files are kept in a cache folder (OUT.cache by default, removed once OUT is
written), so an interrupted extraction rerun with the same arguments skips them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from vgg_flax.cli import add_subcommand
from vgg_flax.models.arch import TORCHVISION_ARCHS
from vgg_flax.preprocessing import PRESETS
from vgg_flax.transfer.descriptors import AGGREGATES, LAYERS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax features`."""
    parser = add_subcommand(
        subparsers, "features", "image descriptors (Appendix B) for a linear probe", __doc__
    )
    parser.add_argument(
        "images", nargs="+", help="image files, a folder of images, or one folder of classes"
    )
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument(
        "--weights",
        default="vgg16",
        help="a pretrained name, a .pth/.h5/.caffemodel file or a vgg-flax checkpoint directory",
    )
    parser.add_argument("--arch", choices=list(TORCHVISION_ARCHS), help="a .pth's architecture")
    parser.add_argument(
        "--scales",
        nargs="+",
        type=int,
        metavar="Q",
        help="test scales (smaller side); default 256 384 512, in proportion for nets trained "
        "on crops under 224",
    )
    parser.add_argument(
        "--aggregate",
        choices=AGGREGATES,
        default="average",
        help="the scales' descriptors averaged, or stacked (Q times as long)",
    )
    parser.add_argument(
        "--layer", choices=LAYERS, default="relu7", help="the activation the descriptors are of"
    )
    parser.add_argument("--no-flips", action="store_true", help="no horizontal flip average")
    parser.add_argument(
        "--preprocessing", choices=list(PRESETS), help="default: the weights' recorded one"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="views per batch at 224x224")
    parser.add_argument("--cache", help="folder of finished files (default: OUT.cache)")
    parser.add_argument(
        "--keep-cache", action="store_true", help="keep the cache folder after writing OUT"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Extract the descriptors and write them to --out."""
    from vgg_flax import compile_cache
    from vgg_flax.cli.predict import load_weights
    from vgg_flax.transfer.descriptors import descriptors
    from vgg_flax.transfer.images import image_set
    from vgg_flax.weights.atomic import check_output

    compile_cache.enable()
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = check_output(args.out)
    found = image_set(args.images)  # bad folders fail before seconds of loading weights
    cache = args.cache or out + ".cache"
    result = descriptors(
        load_weights(args.weights, args.arch),
        found,
        scales=args.scales,
        aggregate_scales=args.aggregate,
        flips=not args.no_flips,
        layer=args.layer,
        preprocessing=args.preprocessing,
        batch_size=args.batch_size,
        cache_dir=cache,
        progress=sys.stderr.isatty(),
    )
    result.save(out)
    if not args.keep_cache and os.path.isdir(cache):
        shutil.rmtree(cache)
    labels = "" if result.class_names is None else f", {len(result.class_names)} classes"
    print(
        f"{args.out}: {len(result.files)} images{labels}, {result.features.shape[1]}-D descriptors "
        f"({result.computed} computed, {len(result.files) - result.computed} from the cache)"
    )
    return 0
