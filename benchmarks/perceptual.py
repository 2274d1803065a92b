"""LPIPS and DISTS beside the `lpips` package and `piq.DISTS` on the same CPU, batch and trunk.

Four tasks, each timed for vgg-flax (jitted) and PyTorch (eager: the `lpips` package, `piq`) in
alternating rounds within one run:
  lpips        LPIPS v0.1 distances of image pairs (forward only): pairs per second;
  lpips+grad   LPIPS distance and its gradient with respect to the first images (as a training
               loss uses it): pairs per second;
  dists        DISTS distances (forward only) beside `piq.DISTS`;
  dists+grad   DISTS distance and its gradient with respect to the first images.
Both sides use the same random VGG16 trunk (`pnet_rand=True`, copied into vgg-flax and piq) and
the published v0.1 heads and DISTS alpha/beta; speed does not depend on the weights' values.
Inputs are uniform in [-1, 1] for LPIPS and [0, 1] for DISTS. Float32, matmul precision
"highest" on both sides. The ratio is vgg-flax's throughput over torch's (> 1: vgg-flax faster).

    .venv/bin/python benchmarks/perceptual.py --batch 4 --size 128 \
        --markdown benchmarks/BENCHMARKS.md --label perceptual
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch  # torch first: torchvision after TensorFlow segfaults (docs/environment.md)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import replace_block  # noqa: E402


def _time(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table, optionally rewrite its block in a markdown file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="image pairs per call")
    p.add_argument("--size", type=int, default=128, help="image height and width")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    p.add_argument("--reps", type=int, default=3, help="calls per round")
    p.add_argument("--markdown", metavar="PATH", help="rewrite this run's block in PATH")
    p.add_argument("--label", default="perceptual", help="name of the markdown block")
    args = p.parse_args(argv)

    import jax
    import lpips
    import numpy as np

    from vgg_flax.parity.torchvision import float32_precision
    from vgg_flax.perceptual.dists import load_dists
    from vgg_flax.perceptual.lpips import load_lpips, trunk_from_lpips

    torch.manual_seed(0)
    reference = lpips.LPIPS(net="vgg", pnet_rand=True, version="0.1", verbose=False)
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    metric = load_lpips("0.1", trunk=trunk_from_lpips(state))
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 3)
    x0, x1 = (rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2))
    t0, t1 = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in (x0, x1))
    dists, piq_dists = _dists_pair(reference, trunk_from_lpips(state), load_dists)
    y0, y1 = (x0 + 1) / 2, (x1 + 1) / 2  # DISTS takes [0, 1]
    u0, u1 = (t0 + 1) / 2, (t1 + 1) / 2

    distance = jax.jit(lambda m, a, b: m(a, b))
    gradient = jax.jit(jax.value_and_grad(lambda a, m, b: m(a, b).sum()))

    def torch_distance():
        with torch.no_grad():
            reference(t0, t1)

    def torch_gradient():
        leaf = t0.clone().requires_grad_(True)
        reference(leaf, t1).sum().backward()

    def piq_distance():
        with torch.no_grad():
            piq_dists(u0, u1)

    def piq_gradient():
        leaf = u0.clone().requires_grad_(True)
        piq_dists(leaf, u1).sum().backward()

    tasks = {
        "lpips": (lambda: distance(metric, x0, x1).block_until_ready(), torch_distance),
        "lpips+grad": (
            lambda: jax.block_until_ready(gradient(x0, metric, x1)),
            torch_gradient,
        ),
        "dists": (lambda: distance(dists, y0, y1).block_until_ready(), piq_distance),
        "dists+grad": (lambda: jax.block_until_ready(gradient(y0, dists, y1)), piq_gradient),
    }
    rows = []
    with float32_precision():
        for task, (ours, theirs) in tasks.items():
            ours(), theirs()  # compile, warm up
            times = {"vgg-flax": [], "torch": []}
            for _ in range(args.rounds):
                times["vgg-flax"].append(_time(ours, args.reps))
                times["torch"].append(_time(theirs, args.reps))
            ratios = [t / o for o, t in zip(times["vgg-flax"], times["torch"], strict=True)]
            jax_s, torch_s = (statistics.median(times[side]) for side in ("vgg-flax", "torch"))
            against = "lpips" if task.startswith("lpips") else "piq.DISTS"
            rows.append(
                f"| {task} | {against} | {args.batch / jax_s:.2f} | {args.batch / torch_s:.2f} "
                f"| **{torch_s / jax_s:.2f}** | {min(ratios):.2f}-{max(ratios):.2f} |"
            )
    table = [
        "| task | torch side | vgg-flax pairs/s | torch pairs/s | ratio | round ratios |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(table))
    if args.markdown:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
        command = "python benchmarks/perceptual.py " + " ".join(argv or sys.argv[1:])
        lines = [
            f"`{command}`",
            "",
            f"{now} UTC on {platform.processor() or platform.machine()} ({os.cpu_count()} "
            f"cores), jax {jax.__version__}, torch {torch.__version__}, lpips "
            f"{importlib.metadata.version('lpips')}, piq {importlib.metadata.version('piq')}; "
            f"batch {args.batch} "
            f"pairs of {args.size}x{args.size}, float32, {args.rounds} rounds x {args.reps} "
            f"calls per side, torch threads {torch.get_num_threads()}; ratio = vgg-flax "
            "throughput / torch throughput (medians).",
            "",
            *table,
        ]
        replace_block(Path(args.markdown), args.label, lines)


def _dists_pair(reference, trunk, load_dists):
    """vgg-flax's DISTS and `piq.DISTS` on the lpips reference's trunk, offline.

    piq builds torchvision's pretrained vgg16 and downloads its alpha/beta: its constructor gets
    a torchvision vgg16 holding the lpips trunk's convolutions, and the published file (alpha and
    beta divided by their sum, as the authors' code uses them), instead.
    """
    import torchvision

    from vgg_flax.parity.piq_dists import offline_piq_dists

    vgg = torchvision.models.vgg16()
    convs = [m for m in reference.net.modules() if isinstance(m, torch.nn.Conv2d)]
    for ours, theirs in zip(
        [m for m in vgg.features if isinstance(m, torch.nn.Conv2d)], convs, strict=True
    ):
        ours.load_state_dict(theirs.state_dict())
    piq_dists = offline_piq_dists(vgg)
    return load_dists(trunk=trunk), piq_dists


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
