"""`vgg-flax convert`: a torchvision `.pth`, safetensors file or folder, hub repository ("hf-hub:
timm/vgg16.tv_in1k"), Keras `.h5` or Caffe `.caffemodel` to a checkpoint, or (`--to safetensors`)
to a folder of model.safetensors and timm's config.json that timm and torchvision load.

The checkpoint records the weights' usage record (`vgg_flax.weights.usage`): the input
preprocessing with its numbers, the input size and, for ImageNet weights, the class names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from vgg_flax.cli import add_subcommand
from vgg_flax.formats.safetensors import LAYOUTS
from vgg_flax.formats.torchvision import HEAD_OPTIONS
from vgg_flax.models.arch import TORCHVISION_ARCHS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax convert ARCH PTH OUT_DIR`."""
    parser = add_subcommand(
        subparsers,
        "convert",
        "convert torchvision (.pth), Keras (.h5) or Caffe weights to a vgg-flax checkpoint",
        "Convert a torchvision .pth, a Keras .h5 or a Caffe .caffemodel VGG into an Orbax "
        "checkpoint directory that "
        "vgg_flax.load(OUT_DIR) reads back as (model, variables, usage).",
    )
    parser.add_argument(
        "arch",
        nargs="?",
        choices=list(TORCHVISION_ARCHS),
        help="architecture (default: read from the file; checked when given)",
    )
    parser.add_argument(
        "pth",
        help="torchvision state dict (.pth), .safetensors file or folder, hf-hub:OWNER/NAME, "
        "Keras weights (.h5, .weights.h5) or Caffe .caffemodel",
    )
    parser.add_argument("out_dir", help="new checkpoint directory (must not exist)")
    parser.add_argument(
        "--to",
        choices=("orbax", "safetensors"),
        default="orbax",
        help="orbax: a vgg-flax checkpoint; safetensors: model.safetensors + timm's config.json",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=None,
        help="tensor names of --to safetensors (default: torchvision's where the architecture "
        "is one of torchvision's, which timm loads too; else vgg-flax's)",
    )
    parser.add_argument(
        "--head",
        choices=HEAD_OPTIONS,
        default="auto",
        help="the classifier: keep it, drop it, or drop it only when it holds NaN/inf",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Convert args.pth and write the checkpoint with its usage record beside it."""
    from vgg_flax.weights.atomic import check_output
    from vgg_flax.weights.loading import load, save
    from vgg_flax.weights.usage import Source

    if args.layout is not None and args.to != "safetensors":
        raise ValueError(
            f"--layout {args.layout} needs --to safetensors (an orbax checkpoint "
            "has vgg-flax's names); add --to safetensors or drop --layout"
        )
    check_output(args.out_dir, new=True)  # before seconds of reading and converting
    model, variables, usage = load(args.pth, args.arch, head=args.head)
    has_head = "fc8" in variables["params"]
    # The usage record (preprocessing with its numbers, input size, ImageNet's class names for
    # published weights) travels with the weights, so evaluate and predict need no flags.
    if usage.source is None:
        usage = dataclasses.replace(usage, source=Source(file=os.path.basename(args.pth)))
    options = {"format": "safetensors", "layout": args.layout} if args.to == "safetensors" else {}
    path = save(args.out_dir, model, variables, usage, **options)
    label = args.arch or f"VGG {model.arch}"
    preset = usage.preprocessing.name
    kind = "safetensors folder" if args.to == "safetensors" else "checkpoint"
    print(
        f"wrote {label} ({'with' if has_head else 'without'} head, {preset} input) as a {kind} "
        f"to {path}"
    )
    return 0
