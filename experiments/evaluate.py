r"""Evaluate checkpoints with the paper's test protocols; print top-1/top-5 error, write JSON.

    python -m experiments.evaluate --checkpoint vgg16-397923af.pth --protocol dense \
        --scales 256 384 512 --dataset imagenet2012 --manual-dir ~/imagenet --output d.json

Several `--checkpoint`s form an ensemble (posteriors averaged). Checkpoints are vgg-flax
directories (a training run's model/ or checkpoints/<step>) or torchvision `.pth` files (arch
inferred from the tensors' shapes, or `--arch`).

The checkpoints' usage records (`vgg_flax.load`'s third value) set the defaults: the input
preprocessing with its numbers, the input size it was trained at (crops and test scales follow
it: a net trained on 32x32 digits is tested at its own size), the test scale Q and the flips of
its training run's evaluation, and the protocol that evaluation used ("center"; published
weights: "dense"). So a run's model/ scores as its training run reported with no flags beyond
the checkpoint and the dataset. A flag that contradicts a record is used, with a
warning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file (python experiments/evaluate.py): find the repo
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Light imports only: JAX and TensorFlow load after the arguments are parsed (fast --help).
from vgg_flax import preprocessing  # noqa: E402
from vgg_flax.cli import HelpFormatter, entry_point  # noqa: E402
from vgg_flax.cli.deploy import add_quantize_options, check_quantize_options  # noqa: E402
from vgg_flax.evaluate.protocols import PROTOCOLS  # noqa: E402
from vgg_flax.weights.atomic import atomic_write, check_output  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m experiments.evaluate`."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.evaluate",
        description=__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--checkpoint", nargs="+", required=True, help="dirs or .pth files")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="test protocol; none: the one the checkpoint's training run evaluated with "
        "(center), else dense",
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        type=int,
        default=None,
        help="test scales Q (center: the resize before the crop); none: the Q the checkpoint's "
        f"training run evaluated at, else {preprocessing.TORCHVISION_RESIZE} scaled to its input "
        "size",
    )
    parser.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add horizontal flips (dense, multicrop); none: off when the checkpoint records "
        "training without flips (e.g. digits), else on",
    )
    add_dataset_options(parser)
    parser.add_argument(
        "--align", type=int, default=32, help="pad sides to multiples of this (fewer shapes)"
    )
    parser.add_argument("--output", default=None, help="JSON result file")
    add_quantize_options(parser)
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
        choices=("mean_rgb", *preprocessing.PRESETS),
        help="input normalisation; none: what the checkpoints' usage records say (their mean "
        "included; .pth files: torchvision, or the registry's; .h5/.caffemodel: caffe)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="evaluate the first N images (none: all)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch at 224x224")
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="crop size the nets were trained at; none: what the checkpoints record, else "
        f"{preprocessing.CROP_SIZE}",
    )


def data_options(args: argparse.Namespace, usages: Sequence[Any]) -> dict[str, Any]:
    """The data config overrides the arguments and the checkpoints' usage records name."""
    from vgg_flax.data.config import normalize_options

    options: dict[str, Any] = {
        "source": args.dataset,
        **normalize_options(chosen_preprocessing(usages, args.normalize)),
        "on_corrupt": "error",
    }
    for key in ("data_dir", "manual_dir", "folder"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.dataset == "digits":
        options["image_size"] = input_size(usages, args.input_size)  # the size the net saw
    return options


def agreed(usages: Sequence[Any], key: str, flag: Any, name: str) -> Any:
    """The usage records' common `key` (an attribute of `Usage`), unless `flag` is given.

    A flag that contradicts a record is used, with a warning; records that differ need the
    flag. None when no record has a value and no flag is given.
    """
    found = [getattr(usage, key) for usage in usages if getattr(usage, key) is not None]
    known = {json.dumps(value) for value in found}
    if flag is not None:
        if known - {json.dumps(flag)}:
            warnings.warn(
                f"{name} {flag} overrides the {key} the checkpoints record ({found}); expect "
                "worse accuracy if they were trained otherwise",
                stacklevel=2,
            )
        return flag
    if len(known) > 1:
        raise ValueError(f"the checkpoints record different {key} ({found}); pass {name} to choose")
    return found[0] if found else None


def input_size(usages: Sequence[Any], flag: int | None) -> int:
    """The crop size the nets were trained at (their records' crop; 224 for published weights)."""
    return agreed(usages, "input_size", flag, "--input-size")


def chosen_scales(usages: Sequence[Any], flag: Sequence[int] | None, size: int) -> list:
    """Q: the flag, else the records' common resize, else 256 scaled to the input size."""
    if flag:
        return list(flag)
    evaluated = {usage.eval_scale for usage in usages}
    if len(evaluated) == 1:
        return [evaluated.pop()]
    return [round(preprocessing.TORCHVISION_RESIZE * size / preprocessing.CROP_SIZE)]


def chosen_protocol(usages: Sequence[Any], flag: str | None) -> str:
    """The test protocol: the flag, else the one the training runs evaluated with, else "dense".

    A training run records its protocol ("center"); one written before that record is known
    for a training run by its `train_scale` and evaluated the same way. Published weights
    (no run) get the paper's dense evaluation.
    """
    if flag is not None:
        return flag
    recorded = {
        usage.eval_protocol or ("center" if usage.train_scale is not None else None)
        for usage in usages
    }
    if len(recorded) > 1:
        raise ValueError(
            f"the checkpoints were evaluated with different protocols ({sorted(map(str, recorded))}"
            "); pass --protocol to choose"
        )
    return recorded.pop() or "dense"


def use_flips(usages: Sequence[Any], flag: bool | None) -> bool:
    """Test-time flips: the flag, else off when every record says training used none."""
    trained = [usage.train_flip for usage in usages if usage.train_flip is not None]
    if flag is not None:
        if flag and trained and not any(trained):
            warnings.warn(
                f"--flips on nets trained without flips ({trained}); expect worse accuracy",
                stacklevel=2,
            )
        return flag
    return not trained or any(trained) or len(trained) < len(usages)


def chosen_preprocessing(usages: Sequence[Any], flag: str | None) -> preprocessing.Preset:
    """The input preprocessing: the one the usage records share, unless `flag` names another.

    `flag` is a name of `vgg_flax.data.config.NORMALIZE_MODES` ("mean_rgb": the records' mean
    where they are mean_rgb, else ImageNet's mean pixel); one that contradicts the records is
    used, with a warning. Records that differ (an ensemble of nets fed differently) need it.
    """
    recorded = [usage.preprocessing for usage in usages]
    values = {_values(preset) for preset in recorded}
    if flag is None:
        if len(values) > 1:
            raise ValueError(
                "the checkpoints record different preprocessing "
                f"({', '.join(p.name for p in recorded)}); an ensemble needs one: pass "
                "--normalize to choose"
            )
        return recorded[0]
    if flag == "mean_rgb":
        means = [p.mean for p in recorded if p.name == "mean_rgb"]
        chosen = preprocessing.mean_rgb(means[0] if means else preprocessing.IMAGENET_MEAN_RGB)
    else:
        chosen = preprocessing.PRESETS[flag]
    if values - {_values(chosen)}:
        warnings.warn(
            f"--normalize {flag} overrides the preprocessing the checkpoints record "
            f"({', '.join(p.name for p in recorded)}); expect worse accuracy if they were "
            "trained otherwise",
            stacklevel=2,
        )
    return chosen


def _values(preset: preprocessing.Preset) -> tuple[Any, ...]:
    return (preset.channel_order, preset.value_range, preset.mean, preset.std)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as `args` say; returns the JSON result (also written to `args.output`)."""
    import jax
    from tqdm import tqdm

    from vgg_flax import data
    from vgg_flax.evaluate import runner
    from vgg_flax.train.trainer import initialize_distributed

    # On several hosts (JAX_COORDINATOR_ADDRESS etc.) each host scores its slice of the split.
    initialize_distributed()
    if args.output:  # refused now, not after the whole evaluation
        check_output(args.output)
    check_quantize_options(args)
    from vgg_flax.weights.loading import load

    loaded = [load(path, args.arch, head="keep") for path in args.checkpoint]
    usages = [network.usage for network in loaded]
    size = input_size(usages, args.input_size)
    scales = chosen_scales(usages, args.scales, size)
    protocol = chosen_protocol(usages, args.protocol)
    data_config = data.default_config(**data_options(args, usages))
    if args.quantize:  # vgg_flax.inference.quantize
        from vgg_flax.data.config import preprocessing_for
        from vgg_flax.inference.quantize import quantized_network

        quantize = (args.quantize, args.calibrate, preprocessing_for(data_config))
        scorers = [quantized_network(network, size, *quantize) for network in loaded]
    else:
        scorers = [runner.load_network(network, input_size=size) for network in loaded]
    result = runner.evaluate_dataset(
        scorers,
        data_config,
        protocol=protocol,
        scales=scales,
        flips=use_flips(usages, args.flips),
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        align=args.align,
        progress=lambda it, total: tqdm(it, total=total, desc=protocol, unit="img"),
    )
    result = {
        "checkpoints": [os.path.abspath(p) for p in args.checkpoint],
        "dataset": args.dataset,
        "split": args.split or data_config.eval_split,
        **result,
    }
    if args.output and jax.process_index() == 0:  # every host has the whole split's result
        with atomic_write(args.output, "w") as f:  # never a half-written result
            json.dump(result, f, indent=2)
    return result


@entry_point("evaluate")
def main(argv: list[str] | None = None) -> int:
    """Entry point: print the errors (one line, exit 2) and the JSON result."""
    args = build_parser().parse_args(argv)
    from vgg_flax import compile_cache

    compile_cache.enable()  # a second evaluation of the same shapes skips compiling
    result = run(args)
    print(
        f"{result['protocol']} at Q={result['scales']}: top-1 error {result['top1_error']:.2f}%, "
        f"top-5 error {result['top5_error']:.2f}% on {result['examples']} images "
        f"({result['compiled_shapes']} compiled shapes)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
