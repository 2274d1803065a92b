"""`vgg-flax convert`: a torchvision `.pth` file to a vgg-flax checkpoint directory."""

from __future__ import annotations

import argparse
import os

from vgg_flax.arch import TORCHVISION_ARCHS
from vgg_flax.cli import add_subcommand
from vgg_flax.convert import HEAD_OPTIONS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax convert ARCH PTH OUT_DIR`."""
    parser = add_subcommand(
        subparsers,
        "convert",
        "convert torchvision weights (.pth) to a vgg-flax Orbax checkpoint",
        "Convert a torchvision VGG .pth file into an Orbax checkpoint directory that "
        "vgg_flax.load(OUT_DIR) reads back as (model, variables).",
    )
    parser.add_argument("arch", choices=list(TORCHVISION_ARCHS))
    parser.add_argument("pth", help="torchvision state dict (zip or legacy format)")
    parser.add_argument("out_dir", help="new checkpoint directory (must not exist)")
    parser.add_argument(
        "--head",
        choices=HEAD_OPTIONS,
        default="auto",
        help="the classifier: keep it, drop it, or drop it only when it holds NaN/inf",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Convert args.pth and write the checkpoint with its architecture recorded beside it."""
    from vgg_flax.loader import load, save

    model, variables = load(args.pth, args.arch, head=args.head)
    has_head = "fc8" in variables["params"]
    path = save(args.out_dir, model, variables, source=os.path.basename(args.pth))
    print(f"wrote {args.arch} ({'with' if has_head else 'without'} head) to {path}")
    return 0
