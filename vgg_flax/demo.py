"""`vgg-flax forward`: build a network and run one forward pass on a random image."""

from __future__ import annotations

import argparse
import time

import jax

from vgg_flax.model import create_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax forward`."""
    parser = subparsers.add_parser("forward", help="one forward pass on random input")
    parser.add_argument("arch", nargs="?", default="A", help="config letter or torchvision name")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Initialise the model, run classification and dense evaluation, print shapes and timing."""
    model = create_model(args.arch)
    images = jax.random.normal(jax.random.key(0), (args.batch, *args.size, 3))
    variables = jax.jit(model.init)(jax.random.key(1), images)
    for mode in ("classify", "dense_map"):
        apply = jax.jit(lambda v, x, mode=mode: model.apply(v, x, mode=mode))
        start = time.perf_counter()
        out = apply(variables, images).block_until_ready()
        print(
            f"{args.arch} {mode}: input {images.shape} -> {out.shape} "
            f"({time.perf_counter() - start:.2f} s with compilation)"
        )
    return 0
