"""LPIPS between two real photos, and a short style transfer with the Johnson et al. losses.

scikit-learn ships two photos, china.jpg and flower.jpg. This script prints their LPIPS (v0.1)
distance per layer, then optimises an image that starts as the china photo to match the flower
photo's style (Gram matrices at relu1_2 ... relu4_3) while keeping its relu2_2 content, with
Adam on the pixels, on the trunk rescaled as Gatys et al. do (every conv filter's mean activation
1 on the two photos, `vgg_flax.perceptual.normalise`; `--no-normalise` for the raw trunk)
(about a minute on a 2-core CPU at the default size). It writes
`{out}/style_transfer.png` (content | style | result) and `{out}/lpips.json`.

    python experiments/perceptual_example.py                      # torchvision's vgg16 weights
    python experiments/perceptual_example.py --trunk path/to/vgg16.pth --steps 100
    python experiments/perceptual_example.py --trunk random       # offline smoke run only

The default trunk is torchvision's vgg16, downloaded once (528 MB) by `vgg_flax.pretrained`.
`--trunk random` uses a seeded random VGG16 so the script runs without any download: its numbers
and picture show that the pipeline works, not what the losses mean.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from vgg_flax import create_model
from vgg_flax.cli import entry_point
from vgg_flax.perceptual.losses import perceptual_loss
from vgg_flax.perceptual.lpips import TAPS, load_lpips
from vgg_flax.perceptual.normalise import normalise_activations


def random_trunk(seed: int = 0, model=None, *, head: bool = False, bias: float = 0.0):
    """A seeded random VGG16 trunk (convolutions only, He-normal), for runs without weights.

    `(model, variables)`; `model` replaces VGG16 (e.g. a narrow one); `head` adds the
    classifier's layers; biases are uniform in [0, `bias`] (zero by default). Drawn with numpy
    from the shapes alone: no initialisation program to compile.
    """
    model = model or create_model("vgg16")
    features = {} if head else {"features": ("pool5",)}
    shapes = jax.eval_shape(
        lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), **features),
        jax.random.key(seed),
    )
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if len(leaf.shape) == 1:  # zero biases draw nothing (the same kernels as before)
            if not bias:
                return np.zeros(leaf.shape, np.float32)
            return rng.uniform(0, bias, leaf.shape).astype(np.float32)
        return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)

    return model, jax.tree.map(draw, shapes)


def photos(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """china and flower as float32 [0, 1] HWC arrays: full size, and resized to `size` wide."""
    from sklearn.datasets import load_sample_images  # the data extra: only when run

    china, flower = load_sample_images().images
    full = [image.astype(np.float32) / 255 for image in (china, flower)]
    height = round(size * china.shape[0] / china.shape[1])
    small = [
        np.asarray(Image.fromarray(image).resize((size, height), Image.BICUBIC), np.float32) / 255
        for image in (china, flower)
    ]
    return full[0], full[1], small[0], small[1]


@entry_point("perceptual_example")
def main(argv: list[str] | None = None) -> int:
    """Print the LPIPS distance, run the style transfer, write the PNG and the JSON."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.perceptual_example",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--out", default="runs/perceptual/", help="output folder")
    p.add_argument("--trunk", default=None, help="vgg16 weights (.pth/checkpoint) or 'random'")
    p.add_argument("--size", type=int, default=128, help="width of the optimised image")
    p.add_argument("--steps", type=int, default=150, help="Adam steps on the pixels")
    p.add_argument("--lr", type=float, default=0.02, help="Adam learning rate")
    p.add_argument("--style-weight", type=float, default=1e5, help="style term's weight")
    p.add_argument(
        "--no-normalise", action="store_true", help="the raw trunk, not Gatys' normalised one"
    )
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    trunk = random_trunk() if args.trunk == "random" else args.trunk

    china, flower, content, style = photos(args.size)
    metric = load_lpips("0.1", trunk=trunk)
    total, layers = metric(china[None], flower[None], per_layer=True, normalize=True)
    report = {
        "lpips_v0.1": float(total[0]),
        "per_layer": {tap: float(value[0]) for tap, value in zip(TAPS, layers, strict=True)},
        "trunk": args.trunk or "torchvision vgg16",
    }
    print(f"LPIPS v0.1 (china.jpg, flower.jpg) = {report['lpips_v0.1']:.4f}")

    # Johnson et al.'s layers; the style weight is raised for a visible effect in a few steps.
    trunk = (metric.model, metric.variables)  # the same frozen VGG16 serves both
    if not args.no_normalise:  # Gatys' rescaling, measured on the two photos themselves
        photos_in = np.stack([content, style]) if content.shape == style.shape else content[None]
        variables = normalise_activations(*trunk, photos_in, preprocessing="torchvision")
        trunk = (metric.model, variables)
    report["normalised"] = not args.no_normalise
    loss = perceptual_loss("johnson", trunk=trunk, style_weight=args.style_weight)
    grams = loss.style_targets(style[None])
    optimiser = optax.adam(args.lr)

    # Targets are arguments, not closure constants: XLA would try to constant-fold the VGG.
    @jax.jit
    def step(image, state, target, grams):
        objective = lambda x: loss(x, content=target, style=grams)[0]  # noqa: E731
        value, grad = jax.value_and_grad(objective)(image)
        updates, state = optimiser.update(grad, state)
        return jnp.clip(optax.apply_updates(image, updates), 0, 1), state, value

    image = jnp.asarray(content[None])
    state = optimiser.init(image)
    start, first = time.perf_counter(), None
    for _ in range(args.steps):
        image, state, value = step(image, state, content[None], grams)
        first = float(value) if first is None else first
    report |= {
        "steps": args.steps,
        "loss_first": first,
        "loss_last": float(value),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"style transfer: loss {first:.4g} -> {float(value):.4g} in {report['seconds']} s")
    panel = np.concatenate([content, style, np.asarray(image[0])], axis=1)
    path = os.path.join(args.out, "style_transfer.png")
    Image.fromarray((panel * 255).round().astype(np.uint8)).save(path)
    with open(os.path.join(args.out, "lpips.json"), "w") as file:
        json.dump(report, file, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
