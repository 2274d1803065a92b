"""`vgg-flax export SOURCE OUT`: a model's forward pass as StableHLO or a TensorFlow SavedModel."""

from __future__ import annotations

import argparse

from vgg_flax.cli import add_subcommand, deploy
from vgg_flax.preprocessing import CROP_SIZE

FORMATS = ("stablehlo", "savedmodel", "onnx")  # onnx: vgg_flax.cli.deploy
PLATFORMS = (
    "cpu,cuda,tpu"  # vgg_flax.inference.export.DEFAULT_PLATFORMS (tested), without importing JAX
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax export SOURCE OUT --format stablehlo|savedmodel`."""
    parser = add_subcommand(
        subparsers,
        "export",
        "export a model's logits as serialised StableHLO (jax.export) or a TensorFlow SavedModel",
        "Export the forward pass (preprocessed NHWC float32 images -> logits, any batch size) "
        "with the weights inside. StableHLO: reload with "
        "jax.export.deserialize(open(OUT, 'rb').read()).call(images). SavedModel (through "
        "jax2tf, needs TensorFlow): tf.saved_model.load(OUT).serve(images).",
    )
    parser.add_argument(
        "source", help="vgg-flax checkpoint directory, torchvision .pth, Keras .h5 or .caffemodel"
    )
    parser.add_argument("out", help="output file (stablehlo, onnx) or new folder (savedmodel)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="stablehlo",
        help="serialised jax.export (a file), a TensorFlow SavedModel (a folder) or ONNX (a file)",
    )
    parser.add_argument(
        "--image-size",
        type=deploy.image_size,
        default=None,
        help="input side, or HxW for --format onnx (default: the weights' recorded input size, "
        "their crop: 224 unless trained smaller)",
    )
    deploy.add_onnx_options(parser)
    parser.add_argument(
        "--platforms",
        default=PLATFORMS,
        help="comma-separated platforms to lower for (cpu, cuda, rocm, tpu)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load args.source and write its export to args.out."""
    from vgg_flax.inference import export
    from vgg_flax.weights import loading as loader

    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    if deploy.needs_deploy_export(args, args.image_size or CROP_SIZE):  # ONNX, quantised, HxW
        return deploy.run_export(args, platforms)  # its options checked before any loading
    model, variables, usage = loader.load(args.source)
    image_size = args.image_size or usage.input_size
    if args.format == "stablehlo":
        export.export_stablehlo(
            model, variables, args.out, image_size=image_size, platforms=platforms
        )
    else:
        export.export_savedmodel(
            model, variables, args.out, image_size=image_size, platforms=platforms
        )
    print(f"wrote {args.out} ({args.format}, images of {image_size}x{image_size}, any batch size)")
    return 0
