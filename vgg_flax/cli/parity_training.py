"""The `--train-steps` part of `vgg-flax parity`: training parity with PyTorch, step by step.

vgg-flax's training step and a reference PyTorch step (SGD with momentum) start from the same
weights and get the same batches; see `vgg_flax.parity.training`. Simulate several CPU devices for
vgg-flax with XLA_FLAGS=--xla_force_host_platform_device_count=N and --devices N.
"""

from __future__ import annotations

import argparse

from vgg_flax.models.arch import HEAD_WIDTH
from vgg_flax.train import recipe

DEFAULTS = {"lr": 0.01, "step_every": 5, "warmup_steps": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training-parity options (they apply with --train-steps N only)."""
    group = parser.add_argument_group("training parity (with --train-steps N)")
    group.add_argument(
        "--train-steps",
        type=int,
        default=0,
        metavar="N",
        help="train N steps on both sides and compare every step (batch: --batch, size: --size)",
    )
    group.add_argument(
        "--dtype", choices=("float64", "float32"), default="float64", help="both sides' precision"
    )
    group.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="base learning rate")
    group.add_argument("--momentum", type=float, default=recipe.MOMENTUM, help="SGD momentum")
    group.add_argument(
        "--weight-decay", type=float, default=recipe.WEIGHT_DECAY, help="L2 weight decay"
    )
    group.add_argument(
        "--l2-mask", choices=recipe.L2_MASKS, default="all", help="the parameters L2 decays"
    )
    group.add_argument(
        "--schedule", choices=recipe.SCHEDULES, default="step", help="learning-rate schedule"
    )
    group.add_argument(
        "--lr-factor", type=float, default=recipe.LR_FACTOR, help="a drop's factor on the rate"
    )
    group.add_argument(
        "--step-every",
        type=int,
        default=DEFAULTS["step_every"],
        metavar="STEPS",
        help="steps between the step schedule's drops",
    )
    group.add_argument(
        "--warmup-steps",
        type=int,
        default=DEFAULTS["warmup_steps"],
        help="linear warm-up steps",
    )
    group.add_argument(
        "--evaluation",
        action="append",
        default=[],
        metavar="STEP=ACCURACY",
        help="a validation accuracy recorded after STEP for the plateau rule (repeatable)",
    )
    group.add_argument("--patience", type=int, default=1, help="plateau patience, evaluations")
    group.add_argument(
        "--dropout", type=float, default=0.0, help="dropout rate, the same masks on both sides"
    )
    group.add_argument("--devices", type=int, default=1, help="devices of vgg-flax's mesh")
    group.add_argument(
        "--head-width",
        type=int,
        default=HEAD_WIDTH,
        help="units of fc6 and fc7 on both sides (a narrow head keeps float64 runs over several "
        "simulated devices small)",
    )
    group.add_argument(
        "--width",
        type=float,
        default=1.0,
        help="multiplier of every conv's channels on both sides (e.g. 0.25 for a narrow net)",
    )
    group.add_argument(
        "--threshold", type=float, help="where the runs part (default: 1e-9 float64, 1e-4 float32)"
    )


def run(args: argparse.Namespace) -> int:
    """Print the step-by-step comparison; exit status 1 if the runs part beyond the threshold."""
    from vgg_flax.parity.training import TrainSetup, compare_training, format_report

    setup = TrainSetup(
        steps=args.train_steps,
        batch=args.batch,
        size=tuple(args.size),
        dtype=args.dtype,
        learning_rate=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        l2_mask=args.l2_mask,
        schedule=args.schedule,
        factor=args.lr_factor,
        step_every=args.step_every,
        warmup_steps=args.warmup_steps,
        evaluations=tuple(_evaluation(text) for text in args.evaluation),
        patience=args.patience,
        dropout=args.dropout,
        devices=args.devices,
        seed=args.seed,
        head_width=args.head_width,
        width=args.width,
    )
    report = compare_training(args.arch, setup, threshold=args.threshold)
    print(format_report(report))
    return int(report.parted is not None)


def _evaluation(text: str) -> tuple[int, float]:
    step, sep, accuracy = text.partition("=")
    try:
        return int(step), float(accuracy)
    except ValueError:
        raise ValueError(f"--evaluation {text!r}: expected STEP=ACCURACY, e.g. 4=0.5") from None
