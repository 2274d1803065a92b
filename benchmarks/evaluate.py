"""Dense evaluation, images/s: vgg-flax beside torchvision running the same protocol, one run.

Both sides score the same images (random sizes drawn like ILSVRC-2012 validation photos, already
rescaled to each test scale Q) with the same weights (a seeded random torchvision model converted
to vgg-flax): the fully convolutional net on the whole image (fc6 as a 7x7 conv, fc7/fc8 as 1x1),
score map averaged, soft-max, and the flipped image's posterior averaged in. vgg-flax runs padded,
masked batches (one compile per padded shape); torchvision runs each image in eager mode at its own
size. A warm-up pass (compilation, first calls) is timed separately. Also printed: the largest
difference between the two sides' log-posteriors (a check that both ran the same protocol).

    .venv/bin/python benchmarks/evaluate.py                    # vgg16, 8 images, Q=256, flips
    .venv/bin/python benchmarks/evaluate.py --scales 256 384 512 --images 16 --arch vgg11
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch  # torch before anything that may load TensorFlow (docs/environment.md)
import torchvision

import vgg_flax
from vgg_flax.evaluate import Scorer, evaluate_arrays

# Typical ILSVRC-2012 validation sizes (height, width): landscape, portrait, 3:2 and square.
PHOTO_SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (500, 500), (400, 500))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="vgg16", choices=("vgg11", "vgg13", "vgg16", "vgg19"))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--scales", type=int, nargs="+", default=[256])
    p.add_argument("--no-flips", action="store_true")
    p.add_argument("--batch-size", type=int, default=4, help="vgg-flax images per batch at 224")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
    return p.parse_args(argv)


def make_examples(count: int, scales: list[int], seed: int = 0) -> list[dict[int, np.ndarray]]:
    """Random normalised images, one per scale, with photo-like aspect ratios."""
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(count):
        height, width = PHOTO_SIZES[index % len(PHOTO_SIZES)]
        short = min(height, width)
        example = {}
        for q in scales:
            size = (height * q // short, width * q // short)  # floor, as torchvision's Resize
            example[q] = rng.standard_normal((*size, 3), np.float32)
        examples.append(example)
    return examples


def torch_dense_head(net: torch.nn.Module) -> torch.nn.Sequential:
    """torchvision's classifier as convolutions: fc6 7x7, fc7 and fc8 1x1 (same weights)."""
    fc6, fc7, fc8 = (m for m in net.classifier if isinstance(m, torch.nn.Linear))
    convs = []
    for linear, kernel in ((fc6, 7), (fc7, 1), (fc8, 1)):
        out_features, in_features = linear.weight.shape
        conv = torch.nn.Conv2d(in_features // kernel**2, out_features, kernel)
        conv.weight.data = linear.weight.data.reshape(conv.weight.shape)
        conv.bias.data = linear.bias.data
        convs.append(conv)
    return torch.nn.Sequential(
        convs[0], torch.nn.ReLU(), convs[1], torch.nn.ReLU(), convs[2]
    ).eval()


def torch_dense(net, head, examples, flips: bool) -> np.ndarray:
    """The same protocol in PyTorch eager mode, one image (and its flip) at a time."""
    out = []
    with torch.no_grad():
        for example in examples:
            posteriors = []
            for image in example.values():
                x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
                batch = torch.cat([x, x.flip(3)]) if flips else x
                scores = head(net.features(batch)).mean(dim=(2, 3))
                posteriors.append(torch.softmax(scores, dim=1).mean(dim=0))
            out.append(torch.stack(posteriors).mean(dim=0).numpy())
    return np.stack(out)


def timed(fn):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict:
    """Run both sides once after a warm-up: seconds, images/s, the time ratio and the check."""
    torch.set_num_threads(args.threads)
    flips = not args.no_flips
    torch.manual_seed(0)
    net = getattr(torchvision.models, args.arch)(weights=None).eval()
    head = torch_dense_head(net)
    scorer = Scorer(*vgg_flax.load(net.state_dict(), args.arch)[:2])
    examples = make_examples(args.images, args.scales)

    def ours():
        return evaluate_arrays([scorer], examples, "dense", flips=flips, batch_size=args.batch_size)

    def theirs():
        return torch_dense(net, head, examples, flips)

    _, ours_warm = timed(ours)
    _, theirs_warm = timed(lambda: torch_dense(net, head, examples[:1], flips))
    got, ours_s = timed(ours)
    expected, theirs_s = timed(theirs)
    return {
        "images": len(examples),
        "flips": flips,
        "shapes": len(scorer.shapes),
        "jax_warm_s": ours_warm,
        "torch_warm_s": theirs_warm,
        "jax_s": ours_s,
        "torch_s": theirs_s,
        "ratio": ours_s / theirs_s,
        "max_log_posterior_gap": float(np.abs(np.log(got) - np.log(expected)).max()),
    }


def main(argv: list[str] | None = None) -> None:
    """Run both sides and print images/s and the ratio."""
    args = parse_args(argv)
    r = measure(args)
    n, flips, ours_s, theirs_s = r["images"], r["flips"], r["jax_s"], r["torch_s"]
    print(
        f"dense evaluation, {args.arch}, {n} images, Q={args.scales}, flips={flips}, "
        f"{os.cpu_count()} CPUs, torch threads {args.threads}"
    )
    print(
        f"warm-up: vgg-flax {r['jax_warm_s']:.1f} s (compiles {r['shapes']} shapes), "
        f"torchvision {r['torch_warm_s']:.1f} s (one image)"
    )
    print(f"vgg-flax:    {n / ours_s:.3f} images/s ({ours_s:.1f} s)")
    print(f"torchvision: {n / theirs_s:.3f} images/s ({theirs_s:.1f} s)")
    print(f"ratio vgg-flax/torchvision images/s: {theirs_s / ours_s:.2f}")
    print(f"max |log-posterior difference| between the sides: {r['max_log_posterior_gap']:.2e}")


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
