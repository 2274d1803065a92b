"""`vgg-flax predict IMAGE...`: the top-5 classes of photos, with names and probabilities.

--weights is a name of `vgg_flax.list_pretrained()` (downloaded once), a torchvision `.pth`
file, a Keras `.h5`, a Caffe `.caffemodel` or a vgg-flax checkpoint directory. Everything else
comes from the weights' usage record (`vgg_flax.load`'s third value: the registry's, the
checkpoint's or the file format's): the input preprocessing with its numbers, the test scale
(its resize), the input size (its crop: a network trained on 32x32 digits is evaluated at 32)
and the class names. A --preprocessing or --scales that contradicts it is used, with a warning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from vgg_flax.cli import add_subcommand, deploy
from vgg_flax.evaluate.protocols import PROTOCOLS
from vgg_flax.models.arch import TORCHVISION_ARCHS
from vgg_flax.preprocessing import PRESETS, TORCHVISION_RESIZE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax predict`."""
    parser = add_subcommand(
        subparsers, "predict", "top-5 ImageNet classes of image files or folders", __doc__
    )
    parser.add_argument("images", nargs="+", help="image files and folders of images")
    parser.add_argument(
        "--weights",
        default="vgg16",
        help="a pretrained name (vgg11 .. vgg19_bn, vgg16_caffe, ...), a .pth/.h5/.caffemodel "
        "file or a vgg-flax checkpoint directory",
    )
    parser.add_argument(
        "--arch",
        choices=list(TORCHVISION_ARCHS),
        help="architecture of a .pth file (default: inferred from its tensors)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="center",
        help="center: resize to Q, center crop (torchvision's); the others: the paper's",
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        type=int,
        default=None,
        metavar="Q",
        help="test scales: the smaller side of the image (one for 'center'); default: the "
        f"weights' recorded resize (torchvision's: {TORCHVISION_RESIZE})",
    )
    parser.add_argument(
        "--preprocessing",
        choices=list(PRESETS),
        help="input preset (default: the one the weights recorded, else torchvision)",
    )
    parser.add_argument("--no-flips", action="store_true", help="no horizontal flips (dense)")
    parser.add_argument("--top", type=int, default=5, help="classes shown per image")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    deploy.add_quantize_options(parser)
    parser.set_defaults(run=run)


def load_weights(source: str, arch: str | None) -> Any:
    """`(model, variables, usage)` of a weights source: a pretrained name, a file or a folder."""
    from vgg_flax.weights.factory import list_pretrained

    if source in list_pretrained() and not os.path.exists(source):
        from vgg_flax.weights.download import pretrained

        return pretrained(source, head="keep")
    if not os.path.exists(source):
        raise ValueError(
            f"weights {source!r}: no such file or folder, and not a pretrained name "
            f"({', '.join(list_pretrained())})"
        )
    from vgg_flax.weights.loading import load

    return load(source, arch, head="keep")


def run(args: argparse.Namespace) -> int:
    """Print each image's top classes as a table, or all of them as JSON."""
    from vgg_flax import compile_cache
    from vgg_flax.inference.prediction import image_files, predict

    compile_cache.enable()  # a second prediction at the same sizes skips compiling
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    files = image_files(args.images)  # before seconds of loading weights
    deploy.check_quantize_options(args)
    model, variables, usage = load_weights(args.weights, args.arch)
    recorded = usage.preprocessing
    if args.preprocessing and args.preprocessing != recorded.name:
        print(
            f"warning: --preprocessing {args.preprocessing} contradicts the {recorded.name!r} "
            f"preprocessing {args.weights} recorded; using {args.preprocessing}",
            file=sys.stderr,
        )
    if args.scales and args.protocol == "center" and args.scales != [usage.eval_scale]:
        print(
            f"warning: --scales {' '.join(map(str, args.scales))} differs from the resize "
            f"{usage.eval_scale} {args.weights} recorded",
            file=sys.stderr,
        )
    if usage.features_only or "fc8" not in variables["params"]:
        raise ValueError(f"{args.weights} has no classifier (features only): nothing to predict")
    preset = args.preprocessing or recorded
    model, variables = deploy.quantized(args, model, variables, preset, usage.input_size)
    predictions = predict(
        files,
        model,
        variables,
        usage,
        top=args.top,
        preprocessing=args.preprocessing if args.preprocessing != recorded.name else None,
        protocol=args.protocol,
        scales=args.scales,
        flips=not args.no_flips,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps([p.as_dict() for p in predictions], indent=2))
    else:
        from vgg_flax.inference.prediction import format_table

        print(format_table(predictions))
    return 0
