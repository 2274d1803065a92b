"""The deployment options of `vgg-flax export`, `vgg-flax predict` and `experiments.evaluate`.

`--quantize int8|int8-weights` with `--calibrate DIR` (vgg_flax.inference.quantize), and for
`export`, `--format onnx` with `--mode` and an `HxW` `--image-size` (vgg_flax.inference.onnx).
Every option is checked before any weights load. Light imports only (fast --help).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from vgg_flax.preprocessing import CROP_SIZE

QUANTIZE_MODES = ("int8", "int8-weights")  # vgg_flax.inference.quantize.MODES (tested)
ONNX_MODES = ("classify", "dense", "dense_map")  # vgg_flax.inference.onnx.MODES (tested)


def image_size(text: str) -> int | tuple[int, int]:
    """An --image-size: one side ("224") or height x width ("97x131")."""
    try:
        sides = [int(side) for side in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive side (224) or HxW (97x131), got {text!r}"
        )
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def add_quantize_options(parser: argparse.ArgumentParser) -> None:
    """--quantize and --calibrate."""
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default=None,
        help="post-training int8 with Qwix: int8 (weights and activations; needs --calibrate) "
        "or int8-weights (weights only, dequantised to float32 to run)",
    )
    parser.add_argument(
        "--calibrate",
        metavar="DIR",
        default=None,
        help="folder of images (center crops at the input size) that calibrate the activation "
        "scales of --quantize int8",
    )


def add_onnx_options(parser: argparse.ArgumentParser) -> None:
    """--mode (ONNX) and the quantisation options."""
    parser.add_argument(
        "--mode",
        choices=ONNX_MODES,
        default=None,
        help="--format onnx: classify (one image size, --image-size) or the dense modes (any "
        "height and width of at least 224, symbolic in the file); default classify",
    )
    add_quantize_options(parser)


def check_quantize_options(args: argparse.Namespace) -> None:
    """Refuse --calibrate without --quantize, or a mode without the images it needs."""
    if args.quantize is None:
        if args.calibrate is not None:
            raise ValueError("--calibrate needs --quantize int8")
        return
    from vgg_flax.inference import quantize

    quantize.check_mode(args.quantize, args.calibrate)
    if args.calibrate is not None:
        quantize.check_calibration_folder(args.calibrate)


def quantized(
    args: argparse.Namespace, model: Any, variables: Any, preprocessing: Any, input_size: int
) -> tuple[Any, Any]:
    """(model, variables) quantised as args say (unchanged without --quantize)."""
    if args.quantize is None:
        return model, variables
    from vgg_flax.inference import quantize

    return quantize.quantize_source(
        model, variables, args.quantize, args.calibrate, preprocessing, input_size
    )


def needs_deploy_export(args: argparse.Namespace, size: int | tuple[int, int]) -> bool:
    """Whether `vgg-flax export` takes `run_export`'s path (ONNX, quantised, HxW, --mode)."""
    return (
        args.format == "onnx"
        or args.quantize is not None
        or args.calibrate is not None
        or args.mode is not None
        or not isinstance(size, int)
    )


def run_export(args: argparse.Namespace, platforms: tuple[str, ...]) -> int:
    """`vgg-flax export` to ONNX, or of a quantised model to any format; options checked first."""
    from vgg_flax.inference import export
    from vgg_flax.weights import loading as loader
    from vgg_flax.weights.atomic import check_output

    # The size to check before any weights load: the one given, else a checkpoint's recorded
    # one (its metadata only); weight files record torchvision's 224.
    recorded = loader.read_usage(args.source) if os.path.isdir(args.source) else None
    size = args.image_size or (recorded.input_size if recorded else CROP_SIZE)
    check_quantize_options(args)
    if args.format != "onnx" and (args.mode is not None or not isinstance(size, int)):
        raise ValueError("--mode and an HxW --image-size are for --format onnx")
    mode = args.mode or "classify"
    classify_size = size if mode == "classify" else args.image_size  # dense: refused if given
    from vgg_flax.inference import onnx

    if args.format == "onnx":
        onnx.check_options(mode, classify_size, None, args.out, args.quantize)
    else:
        onnx.check_options("classify", size)  # the same least size (32) as every export
        check_output(args.out, new=args.format == "savedmodel")
    model, variables, usage = loader.load(args.source)
    preprocessing = usage.preprocessing
    model, variables = quantized(args, model, variables, preprocessing, usage.input_size)
    if args.format == "onnx":
        metadata = onnx.usage_metadata(
            preprocessing,
            usage.class_names,
            input_size=usage.input_size,
            quantize=args.quantize,
        )
        onnx.to_onnx(
            model, variables, args.out, mode=mode, image_size=classify_size, metadata=metadata
        )
        sides = "{}x{}".format(*onnx.image_hw(size)) if mode == "classify" else "any size"
        print(f"wrote {args.out} (onnx, mode {mode}, images of {sides}, any batch size)")
        return 0
    write = export.export_stablehlo if args.format == "stablehlo" else export.export_savedmodel
    write(model, variables, args.out, image_size=size, platforms=platforms)
    print(
        f"wrote {args.out} ({args.format}, {args.quantize}, images of {size}x{size}, any batch "
        "size)"
    )
    return 0
