"""Formulations of VGG's 3x3 convolutions on XLA:CPU beside PyTorch's, layer shape by layer shape.

Where the grid's lagging cells lose their time is the convolutions; this measures, for each map
of VGG16 at 224x224 (batch 8, Cin = Cout as in the second conv of each stage), the forms
vgg-flax uses or tried, each beside PyTorch in the same run (alternating, medians):

- forward: XLA's convolution (what vgg-flax runs at these sizes), the im2col product taken one
  output row at a time with float32 accumulation (tried for bfloat16), and for bfloat16 the
  convolution computed in float32 and rounded (tried); PyTorch's convolution (bf16: autocast);
- kernel gradient: vgg-flax's (`kernels.conv2d`'s VJP: im2col products one output row at a
  time), the 9 whole-map tap products it replaced, and autodiff of `lax`'s convolution;
  PyTorch's weight gradient;
- the matrix product these forms stand on, (N*28*28, 9*512) x (9*512, 512): XLA in the dtype,
  XLA bfloat16 accumulated in float32, PyTorch.

    .venv/bin/python benchmarks/conv_forms.py
    .venv/bin/python benchmarks/conv_forms.py --dtype float32 bfloat16 --markdown \
        benchmarks/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAPS = ((224, 64), (112, 128), (56, 256), (28, 512), (14, 512))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--maps", nargs="+", default=[f"{s}x{c}" for s, c in MAPS], help="SIDExC")
    p.add_argument("--reps", type=int, default=5, help="timed calls per form (alternating)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--label", default="conv-forms")
    return p.parse_args(argv)


def race(forms: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds per call of each form, calls alternating between the forms."""
    for run in forms.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(reps):
        for name, run in forms.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def jax_forms(side: int, channels: int, batch: int, dtype: str) -> dict[str, dict[str, Callable]]:
    """The JAX forms of one layer shape, forward and kernel gradient, as no-argument calls."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from vgg_flax.models import ops as kernels

    dt = jnp.dtype(dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, channels)), dt)
    g = jnp.asarray(rng.standard_normal((batch, side, side, channels)), dt)
    w = jnp.asarray(rng.standard_normal((3, 3, channels, channels)) * 0.01, dt)

    def rows_im2col(x: jax.Array, w: jax.Array) -> jax.Array:
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        flat = w.reshape(9 * channels, channels)

        def row(i: jax.Array, out: jax.Array) -> jax.Array:
            window = lax.dynamic_slice_in_dim(padded, i, 3, axis=1)
            cols = jnp.concatenate(
                [window[:, a : a + 1, b : b + side] for a in range(3) for b in range(3)], -1
            ).reshape(batch * side, 9 * channels)
            y = jnp.dot(cols, flat, preferred_element_type=jnp.float32).astype(dt)
            return lax.dynamic_update_slice_in_dim(out, y.reshape(batch, 1, side, -1), i, 1)

        return lax.fori_loop(0, side, row, jnp.zeros_like(x))

    def whole_map_taps(x: jax.Array, g: jax.Array) -> jax.Array:
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        rows = g.reshape(-1, channels)
        taps = [
            lax.dot_general(
                padded[:, a : a + side, b : b + side].reshape(-1, channels),
                rows,
                (((0,), (0,)), ((), ())),
                preferred_element_type=jnp.float32,
            )
            for a in range(3)
            for b in range(3)
        ]
        return jnp.stack(taps)

    def in_float32(x: jax.Array, w: jax.Array) -> jax.Array:
        return kernels.plain_conv(x.astype(jnp.float32), w.astype(jnp.float32), 1).astype(dt)

    forward = {
        "XLA convolution (vgg-flax)": jax.jit(lambda x, w: kernels.plain_conv(x, w, 1)),
        "im2col by rows, f32 accumulation": jax.jit(rows_im2col),
    }
    if dt != jnp.float32:
        forward["computed in float32"] = jax.jit(in_float32)
    grad = {
        "vgg-flax (im2col by rows)": jax.jit(
            lambda x, w, g: jax.vjp(lambda k: kernels.conv2d(x, k, 1), w)[1](g)[0]
        ),
        "9 whole-map tap products": jax.jit(lambda x, w, g: whole_map_taps(x, g)),
        "autodiff of lax's convolution": jax.jit(
            lambda x, w, g: jax.vjp(lambda k: kernels.plain_conv(x, k, 1), w)[1](g)[0]
        ),
    }
    return {
        "forward": {k: (lambda f=f: f(x, w).block_until_ready()) for k, f in forward.items()},
        "kernel gradient": {
            k: (lambda f=f: f(x, w, g).block_until_ready()) for k, f in grad.items()
        },
    }


def torch_forms(side: int, channels: int, batch: int, dtype: str) -> dict[str, Callable]:
    """PyTorch's forward convolution and weight gradient of the same shape."""
    import torch

    x = torch.randn(batch, channels, side, side)
    g = torch.randn(batch, channels, side, side)
    w = torch.randn(channels, channels, 3, 3) * 0.01
    bf16 = dtype == "bfloat16"
    # What autocast hands oneDNN in the backward: both operands in bfloat16.
    xb, gb, wb = (t.bfloat16() for t in (x, g, w)) if bf16 else (x, g, w)

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            torch.nn.functional.conv2d(x, w, padding=1)

    def kernel_gradient() -> None:
        # The weight gradient alone (output_mask), as autograd's convolution_backward runs it.
        torch.ops.aten.convolution_backward(
            gb, xb, wb, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]
        )

    return {"forward": forward, "kernel gradient": kernel_gradient}


def matmul_forms(batch: int, reps: int) -> list[tuple[str, float]]:
    """GFLOP/s of the product the im2col forms stand on, per implementation."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    m, k, n = batch * 28 * 28, 9 * 512, 512
    rng = np.random.default_rng(0)
    a32, b32 = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    forms: dict[str, Callable[[], Any]] = {}
    for name, dt, acc in (
        ("XLA float32", jnp.float32, None),
        ("XLA bfloat16 (bf16 result)", jnp.bfloat16, None),
        ("XLA bfloat16, float32 accumulation", jnp.bfloat16, jnp.float32),
    ):
        a, b = jnp.asarray(a32, dt), jnp.asarray(b32, dt)
        f = jax.jit(lambda a, b, acc=acc: jnp.dot(a, b, preferred_element_type=acc))
        forms[name] = lambda f=f, a=a, b=b: f(a, b).block_until_ready()
    ta, tb = torch.from_numpy(a32), torch.from_numpy(b32)
    forms["PyTorch float32"] = lambda: ta @ tb
    ta16, tb16 = ta.bfloat16(), tb.bfloat16()
    forms["PyTorch bfloat16"] = lambda: ta16 @ tb16
    medians = race(forms, reps)
    return [(name, 2 * m * k * n / s / 1e9) for name, s in medians.items()]


def main(argv: list[str] | None = None) -> None:
    """Time every form of every layer shape and print (and optionally save) the tables."""
    args = parse_args(argv)
    import torch  # before anything that may load TensorFlow

    torch.set_num_threads(args.threads)
    from models import machine, replace_block

    command = shlex.join(["python", "benchmarks/conv_forms.py", *sys.argv[1:]])
    lines = [f"`{command}`"]
    m = machine()
    lines += [
        "",
        f"{m['date_utc']} UTC on {m['cpu']} ({m['cores']} cores), jax {m['jax']}, torch "
        f"{m['torch']}; batch {args.batch}, {args.reps} alternating calls per form, medians; "
        "ratio = form / PyTorch.",
        "",
        "| dtype | map | task | form | s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for dtype in args.dtype:
        for spec in args.maps:
            side, channels = (int(v) for v in spec.split("x"))
            ours = jax_forms(side, channels, args.batch, dtype)
            theirs = torch_forms(side, channels, args.batch, dtype)
            for task, forms in ours.items():
                medians = race({**forms, "PyTorch": theirs[task]}, args.reps)
                for name, seconds in medians.items():
                    ratio = seconds / medians["PyTorch"]
                    row = f"| {dtype} | {spec} | {task} | {name} | {seconds:.4f} | {ratio:.2f} |"
                    print(row, flush=True)
                    lines.append(row)
    lines += ["", f"Matrix product ({args.batch}*28*28, 4608) x (4608, 512):", ""]
    lines += ["| implementation | GFLOP/s |", "|---|---|"]
    for name, rate in matmul_forms(args.batch, args.reps):
        print(f"{name}: {rate:.0f} GFLOP/s")
        lines.append(f"| {name} | {rate:.0f} |")
    if args.markdown:
        replace_block(Path(args.markdown), args.label, lines)


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
