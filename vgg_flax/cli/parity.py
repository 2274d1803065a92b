"""`vgg-flax parity`: run torchvision and vgg-flax on the same inputs and compare layer by layer.

Every activation torchvision exposes as a module output is compared with vgg-flax's activation
of the same name; optionally the gradients of the cross-entropy loss (--grad) and BatchNorm in
training mode with its updated running statistics (--train-bn). Needs torch.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from vgg_flax.cli import add_subcommand, parity_training
from vgg_flax.inference.prediction import image_files
from vgg_flax.models.arch import TORCHVISION_ARCHS
from vgg_flax.preprocessing import (
    CROP_SIZE,
    TORCHVISION_MEAN,
    TORCHVISION_RESIZE,
    TORCHVISION_STD,
)


def load_images(folder: str) -> np.ndarray:
    """Every image in `folder` through torchvision's eval transform, as one NCHW float32 batch."""
    import torch
    from PIL import Image
    from torchvision import transforms

    if not os.path.isdir(folder):
        raise ValueError(f"--images {folder}: no such folder")
    transform = transforms.Compose(
        [
            transforms.Resize(TORCHVISION_RESIZE),
            transforms.CenterCrop(CROP_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(TORCHVISION_MEAN, TORCHVISION_STD),
        ]
    )
    batch = [transform(Image.open(path).convert("RGB")) for path in image_files([folder])]
    return torch.stack(batch).numpy()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax parity`."""
    parser = add_subcommand(
        subparsers, "parity", "compare vgg-flax with torchvision layer by layer", __doc__
    )
    parser.add_argument("arch", choices=list(TORCHVISION_ARCHS), help="torchvision's network")
    parser.add_argument("--pth", help="weights to compare (default: seeded random weights)")
    parser.add_argument(
        "--keras",
        nargs="?",
        const="",
        metavar="H5",
        help="compare with Keras 3's vgg16/vgg19 instead, on this Keras weights file (without "
        "H5: seeded random weights); BGR mean-subtracted inputs (vgg_flax.parity.keras)",
    )
    parser.add_argument("--images", help="folder of images (default: random inputs)")
    parser.add_argument(
        "--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"), help="input size"
    )
    parser.add_argument("--batch", type=int, default=2, help="random inputs per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--grad", action="store_true", help="compare loss gradients too")
    parser.add_argument(
        "--grad-dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the gradient comparison (see vgg_flax.parity.torchvision.compare)",
    )
    parser.add_argument("--train-bn", action="store_true", help="BatchNorm in training mode")
    parity_training.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the layer-by-layer comparison; exit status 1 if any relative error exceeds 1e-4."""
    import torch  # before anything that might load TensorFlow

    if args.keras is not None:
        from vgg_flax.parity.keras import run_parity

        return run_parity(args.arch, args.keras or None, args.size, args.batch, args.seed)

    if args.train_steps:
        return parity_training.run(args)

    from vgg_flax.formats.pth import load_pth
    from vgg_flax.parity.torchvision import compare, torch_model

    if args.images:
        images = load_images(args.images)
    else:
        generator = torch.Generator().manual_seed(args.seed)
        images = torch.randn(args.batch, 3, *args.size, generator=generator).numpy()
    state = load_pth(args.pth) if args.pth else None
    net = torch_model(args.arch, state, args.seed)
    report = compare(
        args.arch,
        net,
        images,
        grad=args.grad,
        train_bn=args.train_bn,
        seed=args.seed,
        grad_dtype=args.grad_dtype,
    )
    print(f"{args.arch}: inputs {tuple(images.shape)} (NCHW), float32")
    sections = [
        ("activation", report.activations),
        (f"gradient ({args.grad_dtype})", report.gradients),
        ("running stat", report.running_stats),
    ]
    worst = 0.0
    for title, rows in sections:
        if rows:
            print(f"{title:<32} {'max |diff|':>12} {'relative':>12}")
        for row in rows:
            print(f"{row.name:<32} {row.max_abs:12.3e} {row.max_rel:12.3e}")
            worst = max(worst, row.max_rel)
    print(f"top-1 agreement: {report.top1_agreement:.1%}")
    return int(worst > 1e-4)
