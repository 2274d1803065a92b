"""A frozen VGG inside a training loop: a small denoiser trained with an LPIPS + DISTS loss.

The network (a few 3x3 convolutions predicting the noise, `Denoiser`) learns to clean random
crops of scikit-learn's two photos with Gaussian noise added. Its loss is LPIPS v0.1 plus DISTS
of its output against the clean crop, both on one frozen VGG-16 trunk (no gradient reaches it)
run in bfloat16 and rematerialised in the backward pass (`--no-bf16`, `--no-remat` to turn them
off). The step is one `jax.jit` over the device mesh: the batch is split over every device, the
parameters and the frozen metrics are replicated. Before training it compiles the step with and
without remat and reports XLA's temporary memory of each (`memory_analysis()`: the peak of the
step's intermediate buffers). Writes `{out}/perceptual_train.json` (losses, memory, devices) and
`{out}/loss.png` (the loss curve).

    python -m experiments.perceptual_train                        # torchvision's vgg16 weights
    python -m experiments.perceptual_train --trunk random --steps 30 --size 32   # offline
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m experiments.perceptual_train ...

`--trunk random` is a seeded random full-width VGG-16 (both metrics need full width): the loss
still falls (the metrics are smooth functions of the image), but it shows the pipeline, not what
a trained VGG's metric teaches.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vgg_flax import parallel
from vgg_flax.cli import HelpFormatter, entry_point
from vgg_flax.perceptual.dists import load_dists
from vgg_flax.perceptual.lpips import load_lpips

from .perceptual_example import random_trunk


class Denoiser(nn.Module):
    """`depth` 3x3 convolutions of `features` channels predicting the noise, subtracted."""

    features: int = 32
    depth: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """The denoised images, NHWC in [0, 1] (clipped)."""
        h = x
        for _ in range(self.depth - 1):
            h = nn.relu(nn.Conv(self.features, (3, 3))(h))
        return jnp.clip(x - nn.Conv(3, (3, 3))(h), 0, 1)


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two photos, float32 [0, 1] (the data extra, imported only when run)."""
    from sklearn.datasets import load_sample_images

    return [p.astype(np.float32) / 255 for p in load_sample_images().images]


def crops(rng: np.random.Generator, photos: list[np.ndarray], count: int, size: int) -> np.ndarray:
    """`count` random `size` x `size` crops of `photos`, float32 [0, 1]."""
    out = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - size + 1)
        left = rng.integers(photo.shape[1] - size + 1)
        out[i] = photo[top : top + size, left : left + size]
    return out


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.perceptual_train",
        description=__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # --step is not --steps
    )
    p.add_argument("--out", default="runs/perceptual_train/", help="output folder")
    p.add_argument("--trunk", default=None, help="vgg16 weights (.pth/checkpoint) or 'random'")
    p.add_argument("--steps", type=int, default=200, help="training steps")
    p.add_argument("--batch", type=int, default=8, help="global batch (split over devices)")
    p.add_argument("--size", type=int, default=64, help="crop side")
    p.add_argument("--noise", type=float, default=0.1, help="std of the Gaussian noise")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--no-bf16", action="store_true", help="run the trunk in float32")
    p.add_argument("--no-remat", action="store_true", help="keep the trunk's activations")
    p.add_argument("--log-every", type=int, default=10, help="print the loss every N steps")
    p.add_argument(
        "--skip-memory", action="store_true", help="compile only the step used (no comparison)"
    )
    return p


@entry_point("perceptual_train")
def main(argv: list[str] | None = None) -> int:
    """Entry point: `train(argv)`; expected failures are one line and exit 2."""
    train(argv)
    return 0


def train(argv: list[str] | None = None) -> dict:
    """Measure memory with and without remat, train, write the JSON and the loss curve."""
    args = build_parser().parse_args(argv)
    photos = sample_photos()  # before minutes of compiling: a missing extra is said at once
    os.makedirs(args.out, exist_ok=True)

    mesh = parallel.make_mesh()
    data, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    if args.batch % mesh.size:
        raise ValueError(f"--batch {args.batch} must split evenly over {mesh.size} devices")
    trunk = random_trunk() if args.trunk == "random" else args.trunk
    dtype = None if args.no_bf16 else jnp.bfloat16
    lpips = load_lpips("0.1", trunk=trunk, dtype=dtype)
    trunk = (lpips.model, lpips.variables)  # one trunk for both metrics
    dists = load_dists(trunk=trunk, dtype=dtype)
    model = Denoiser()
    params = model.init(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3)))
    optimiser = optax.adam(args.lr)
    state = optimiser.init(params)

    def loss_fn(params, metrics, noisy, clean):
        out = model.apply(params, noisy)
        lpips_metric, dists_metric = metrics
        return jnp.mean(lpips_metric(out, clean, normalize=True)) + jnp.mean(
            dists_metric(out, clean)
        )

    def train_step(params, state, metrics, noisy, clean):
        value, grads = jax.value_and_grad(loss_fn)(params, metrics, noisy, clean)
        updates, state = optimiser.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    def compiled(remat: bool):
        metrics = jax.device_put(
            (lpips.replace(remat=remat), dists.replace(remat=remat)), replicated
        )
        jitted = jax.jit(
            train_step,
            in_shardings=(replicated, replicated, replicated, data, data),
            out_shardings=(replicated, replicated, replicated),
            donate_argnums=(0, 1),
        )
        shape = jax.ShapeDtypeStruct((args.batch, args.size, args.size, 3), jnp.float32)
        executable = jitted.lower(params, state, metrics, shape, shape).compile()
        return executable, metrics, executable.memory_analysis()

    memory, programs = {}, {}
    for remat in (not args.no_remat,) if args.skip_memory else (False, True):
        programs[remat] = compiled(remat)
        analysis = programs[remat][2]
        memory["remat" if remat else "no_remat"] = {
            "temp_mib": round(analysis.temp_size_in_bytes / 2**20, 1),
            "argument_mib": round(analysis.argument_size_in_bytes / 2**20, 1),
        }
    print(f"step memory (XLA temporaries per device program): {json.dumps(memory)}")
    step, metrics, _ = programs[not args.no_remat]  # compiled once, measured above

    rng = np.random.default_rng(0)
    params, state = jax.device_put((params, state), replicated)
    losses, start = [], time.perf_counter()
    for index in range(args.steps):
        clean = crops(rng, photos, args.batch, args.size)
        noisy = np.clip(clean + rng.normal(0, args.noise, clean.shape), 0, 1).astype(np.float32)
        params, state, value = step(
            params, state, metrics, jax.device_put(noisy, data), jax.device_put(clean, data)
        )
        losses.append(float(value))
        if index % args.log_every == 0 or index == args.steps - 1:
            print(f"step {index}: loss {losses[-1]:.4f}")
    report = {
        "devices": mesh.size,
        "trunk": args.trunk or "torchvision vgg16",
        "trunk_dtype": "float32" if args.no_bf16 else "bfloat16",
        "remat": not args.no_remat,
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
        "memory": memory,
        "seconds": round(time.perf_counter() - start, 1),
    }
    with open(os.path.join(args.out, "perceptual_train.json"), "w") as file:
        json.dump(report, file, indent=2)
    _plot(losses, os.path.join(args.out, "loss.png"))
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {report['seconds']} s; wrote {args.out}")
    return report


def _plot(losses: list[float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    axis.plot(losses)
    axis.set_xlabel("step")
    axis.set_ylabel("LPIPS + DISTS")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
