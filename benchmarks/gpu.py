"""VGG-D (vgg16) training throughput on one accelerator: vgg-flax beside PyTorch, plus parity.

Both sides train at batch 256, 224x224 (ImageNet-sized, 1000 classes) with SGD + momentum, in
bfloat16 (vgg-flax: module dtype bfloat16 with float32 parameters; PyTorch: bf16 autocast) and in
float32 (both at their default matmul precision, TF32 on NVIDIA tensor cores: JAX's default, and
`torch.set_float32_matmul_precision("high")`). PyTorch runs channels-last under `torch.compile`.
Printed: images/s (median over the timed steps, after warm-up; compilation reported apart) and
model FLOP utilisation, MFU = 3 x forward FLOPs x images/s / the chip's peak (forward FLOPs from
`arch.count_macs`; backward counted as twice the forward). The parity check runs both
forwards with the same weights at the highest precision (no TF32) and reports the largest logit
difference.

    python benchmarks/gpu.py --markdown benchmarks/BENCHMARKS.md      # on the GPU machine
    python benchmarks/gpu.py --device cpu --batch 2 --size 32 --steps 2 --no-compile  # smoke test
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch  # before anything that may load TensorFlow (docs/environment.md)
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, replace_block  # noqa: E402

from vgg_flax.models import arch  # noqa: E402

ARCH = "vgg16"
# Dense peak TFLOP/s by device-name fragment: (bf16, tf32). Unknown chips need --peak-tflops.
PEAKS = {
    "H200": (989.0, 494.0),
    "H100": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0),
    "A10": (125.0, 62.5),
}
PARITY_RTOL = 1e-4  # of the largest |logit|; float32 at highest precision agrees to ~1e-6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10, help="timed steps per side and precision")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--device", default="cuda", help="torch device; 'cpu' only for a smoke test")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (smoke tests)")
    p.add_argument("--peak-tflops", type=float, nargs=2, metavar=("BF16", "TF32"))
    p.add_argument("--parity-batch", type=int, default=8)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--child", nargs=2, metavar=("SIDE", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.size < 32:
        p.error("--batch and --steps must be at least 1 and --size at least 32")
    return args


def peak_tflops(name: str, args: argparse.Namespace) -> tuple[float, float] | None:
    """(bf16, tf32) dense peak of this chip, from --peak-tflops or the table."""
    if args.peak_tflops:
        return tuple(args.peak_tflops)
    for fragment, peaks in PEAKS.items():
        if fragment.lower() in name.lower():
            return peaks
    return None


def median_step(step: Any, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of the timed calls); step() must block."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def torch_train(dtype: str, args: argparse.Namespace) -> tuple[float, float]:
    """PyTorch: channels-last, bf16 autocast or TF32, torch.compile; (first, median) seconds."""
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    model = torchvision.models.vgg16().to(device).to(memory_format=torch.channels_last).train()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    opt = torch.optim.SGD(
        model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    forward = model if args.no_compile else torch.compile(model)
    autocast = dtype == "bfloat16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            logits = forward(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return median_step(step, args.warmup, args.steps)  # freed on return: no GPU memory kept


def jax_train(dtype: str, args: argparse.Namespace) -> tuple[float, float]:
    """vgg-flax: jitted SGD step with donated state; (first call with compile, median) s."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from vgg_flax.models.vgg import create_model
    from vgg_flax.train.init import init_variables

    _check_jax_backend(args)
    model = create_model(ARCH, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, 1000, args.batch), jnp.int32)
    params = init_variables(model, jax.random.key(0), args.size)["params"]
    tx = optax.chain(
        optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    )

    @jax.jit
    def init_opt(params):
        return tx.init(params)

    def train_step(state, key):
        params, opt = state

        def loss_fn(params):
            logits = model.apply({"params": params}, images, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels
            ).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    jitted = jax.jit(train_step, donate_argnums=0)
    box = [(params, init_opt(params))]
    key = jax.random.key(1)

    def step():
        box[0] = jitted(box[0], key)
        jax.block_until_ready(box[0])

    return median_step(step, args.warmup, args.steps)


def _check_jax_backend(args: argparse.Namespace) -> None:
    import jax

    if args.device == "cuda" and jax.default_backend() != "gpu":
        raise SystemExit(
            f"JAX runs on {jax.default_backend()!r}, not the GPU: install its CUDA plugin "
            "(pip install 'jax[cuda13]' at the jax version of constraints.txt), or pass "
            "--device cpu for a smoke test"
        )


def parity(args: argparse.Namespace) -> dict[str, float]:
    """Same torchvision weights on both sides, float32 at highest precision: logit difference."""
    import jax
    import jax.numpy as jnp

    import vgg_flax

    _check_jax_backend(args)
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    net = torchvision.models.vgg16().eval()
    images = torch.randn(args.parity_batch, 3, args.size, args.size)
    with torch.inference_mode():
        want = net.to(device)(images.to(device)).float().cpu().numpy()
    model, variables, _ = vgg_flax.load(net.cpu().state_dict(), ARCH, precision="highest")
    x = jnp.asarray(images.permute(0, 2, 3, 1).numpy())
    got = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    diff = float(jnp.max(jnp.abs(got - jnp.asarray(want))))
    scale = float(abs(want).max())
    torch.backends.cudnn.allow_tf32 = True
    return {"max_abs_diff": diff, "max_abs_logit": scale, "ok": diff <= PARITY_RTOL * scale}


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process (JAX and PyTorch never share the GPU's memory)."""
    side, dtype = args.child
    if side == "parity":
        result: Any = parity(args)
    else:
        result = (jax_train if side == "vgg-flax" else torch_train)(dtype, args)
    print(json.dumps(result))


def in_child(argv: list[str], side: str, dtype: str) -> Any:
    """Run `child` in a new process and return what it printed."""
    cmd = [sys.executable, __file__, *argv, "--child", side, dtype]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} {dtype} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Measure both sides in each precision, then the parity check; print and save."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    # The parent never starts JAX: its GPU client would hold memory the children need.
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.device} (smoke test)"
    jax_version = importlib.metadata.version("jax")
    peaks = peak_tflops(name, args)
    flops_per_image = 3 * 2 * arch.count_macs("D", args.size)
    rows = []
    for dtype in args.dtype:
        peak = None if peaks is None else peaks[0 if dtype == "bfloat16" else 1] * 1e12
        for side in ("vgg-flax", "pytorch"):
            first, median = in_child(argv, side, dtype)
            rate = args.batch / median
            row = {
                "side": side,
                "dtype": dtype,
                "step_s": median,
                "first_step_s": first,
                "images_per_s": rate,
                "mfu": None if peak is None else rate * flops_per_image / peak,
            }
            rows.append(row)
            mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
            print(
                f"{side:8s} {dtype:8s} {rate:8.1f} images/s  step {median:.3f} s  "
                f"first {first:.1f} s  MFU {mfu}",
                flush=True,
            )
    check = in_child(argv, "parity", "float32")
    print(f"parity (float32, highest precision): {check}", flush=True)
    report = {
        "device": name,
        "jax": jax_version,
        "torch": torch.__version__,
        "batch": args.batch,
        "size": args.size,
        "peak_tflops_bf16_tf32": peaks,
        "rows": rows,
        "parity": check,
        "command": "python benchmarks/gpu.py " + " ".join(argv),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.markdown:
        lines = [
            f"`{report['command']}`",
            "",
            f"{report['date_utc']} UTC on {name}, jax {jax_version}, torch "
            f"{torch.__version__}; VGG-D, batch {args.batch}, {args.size}x{args.size}, SGD "
            f"momentum; {args.steps} timed steps after {args.warmup} warm-up.",
            "",
            "| side | dtype | images/s | step s | first step s | MFU |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['side']} | {r['dtype']} | {r['images_per_s']:.1f} | {r['step_s']:.3f} "
                f"| {r['first_step_s']:.1f} | "
                + ("n/a" if r["mfu"] is None else f"{r['mfu']:.1%}")
                + " |"
                for r in rows
            ),
            "",
            f"Parity at highest precision: max |logit difference| {check['max_abs_diff']:.2e} "
            f"(largest |logit| {check['max_abs_logit']:.2f}); "
            + ("passes." if check["ok"] else "FAILS."),
        ]
        replace_block(Path(args.markdown), "gpu", lines)


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
