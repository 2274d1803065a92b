"""vgg-flax beside torchvision on this machine's CPU: forward pass and training step.

Both sides run in one process, alternating round by round after a warm-up; compilation (JAX) and
the first call (PyTorch) are timed separately. Each measured call ends when its result is ready.
Printed: median seconds per call of each side, the ratio vgg-flax / torchvision (<= 1 means
vgg-flax is at least as fast), the range of the per-round ratios, and, when asked, the peak
resident memory of each side, each measured in a fresh child process of its own.

    .venv/bin/python benchmarks/models.py                       # vgg16, float32, batch 8, 224
    .venv/bin/python benchmarks/models.py --arch vgg11 vgg16_bn --dtype bfloat16 --memory
    .venv/bin/python benchmarks/models.py --memory --markdown BENCHMARKS.md --label fp32

`--variant` switches off this package's optimisations (benchmarks/BENCHMARKS.md explains them),
to measure what they are worth in the same run as PyTorch: "plain" builds the model with
`kernels="lax"` (standard lax ops on every platform) and compiles without vgg_flax.xla_options
and without donation; "concurrent" only drops the compiler options, "no-donate" only the
donation. Nothing here replaces an attribute of vgg_flax: every variant is a model field or a
compile option.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TASKS = ("forward", "train")
DTYPES = ("float32", "bfloat16")
VARIANTS = ("optimised", "plain", "no-donate", "concurrent")
ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
MARK = "<!-- benchmark:{} -->"
END = "<!-- /benchmark:{} -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (also used by the memory child processes)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["vgg16"], choices=[*ARCHS, "all"])
    p.add_argument("--task", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per side per round")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
    p.add_argument("--variant", default="optimised", choices=VARIANTS)
    p.add_argument(
        "--step",
        default="optax",
        choices=("optax", "project"),
        help="vgg-flax training step: a plain optax SGD step, or vgg_flax.train.step's",
    )
    p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before JAX loads")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS per side")
    p.add_argument("--json", metavar="PATH", help="write every result as JSON ('-': stdout)")
    p.add_argument("--markdown", metavar="PATH", help="rewrite this run's block in PATH")
    p.add_argument("--label", default=None, help="name of the markdown block (default: dtype)")
    p.add_argument("--note", default="", help="one line printed above the markdown table")
    p.add_argument("--child", nargs=3, metavar=("SIDE", "TASK", "ARCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if "all" in args.arch:
        args.arch = list(ARCHS)
    for name in ("batch", "size", "rounds", "reps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.size < 32:
        p.error(f"--size must be at least 32 (VGG pools five times), got {args.size}")
    return args


def setup_xla(args: argparse.Namespace) -> None:
    """Set XLA_FLAGS before JAX is imported (it reads them once)."""
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()


# ----------------------------------------------------------------------------- the two sides


def torch_side(arch: str, task: str, args: argparse.Namespace) -> Callable[[], Any]:
    """A no-argument callable running one torchvision forward pass or SGD step."""
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 1000, (args.batch,))
    autocast = args.dtype == "bfloat16"

    if task == "forward":
        model.eval()

        def forward():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                return model(images)

        return forward

    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        return loss

    return step


def kernels_for(variant: str) -> str:
    """The model's `kernels` field for a variant: "lax" (standard ops everywhere) for "plain"."""
    return "lax" if variant == "plain" else "auto"


def jit_options(variant: str) -> dict[str, str]:
    """Compiler options for a variant: vgg_flax.xla_options's, or none ("plain", "concurrent")."""
    from vgg_flax.xla_options import compiler_options

    return {} if variant in ("plain", "concurrent") else compiler_options()


def jax_side(arch: str, task: str, args: argparse.Namespace) -> tuple[Callable[[], Any], float]:
    """(callable running one vgg-flax forward pass or SGD step, seconds spent compiling)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from vgg_flax.models.vgg import create_model
    from vgg_flax.train.init import init_variables

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = create_model(arch, dtype=dtype, kernels=kernels_for(args.variant))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, 1000, args.batch), jnp.int32)
    # The same values as jax.jit(model.init), without holding the draw's temporaries at once.
    variables = init_variables(model, jax.random.key(0), args.size)
    start = time.perf_counter()

    if task == "forward":
        options = jit_options(args.variant)
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=options)
        compiled = forward.lower(variables, images).compile()
        return (lambda: compiled(variables, images)), time.perf_counter() - start

    if args.step == "project":
        return project_step(model, variables, images, labels, args)
    tx = optax.chain(
        optax.add_decayed_weights(WEIGHT_DECAY),
        optax.sgd(LEARNING_RATE, momentum=MOMENTUM),
    )
    state = {"variables": variables, "opt": tx.init(variables["params"])}

    def train_step(state, images, labels, key):
        variables = state["variables"]

        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params},
                images,
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels
            )
            return loss.mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        deltas, opt = tx.update(grads, state["opt"], variables["params"])
        params = optax.apply_updates(variables["params"], deltas)
        return {"variables": {**variables, **updates, "params": params}, "opt": opt}, loss

    donate = () if args.variant in ("plain", "no-donate") else (0,)
    options = jit_options(args.variant)
    jitted = jax.jit(train_step, donate_argnums=donate, compiler_options=options)
    key = jax.random.key(1)
    compiled = jitted.lower(state, images, labels, key).compile()
    seconds = time.perf_counter() - start
    box = [state]

    def step():
        box[0], loss = compiled(box[0], images, labels, key)
        return loss

    step.compiled = compiled  # benchmarks/layer_profile.py reads the optimised HLO
    return step, seconds


def project_step(model, variables, images, labels, args) -> tuple[Callable[[], Any], float]:
    """vgg-flax's own training step (vgg_flax/train/step.py) on a one-device mesh.

    That step always donates its state and is jitted with vgg_flax.xla_options; for the variants
    without those options ("plain", "concurrent") the scheduler is set back to XLA's default at
    compile time (options given to `compile` override the jit's).
    """
    import jax

    from vgg_flax.parallel import batch_sharding, make_mesh
    from vgg_flax.train.optim import make_optimizer
    from vgg_flax.train.step import create_state, make_train_step
    from vgg_flax.xla_options import compiler_options

    start = time.perf_counter()
    mesh = make_mesh(jax.devices()[:1])
    tx = make_optimizer(lambda step: LEARNING_RATE, momentum=MOMENTUM)
    state = create_state(variables, jax.random.key(1), mesh, tx)
    # L2 on every parameter, as PyTorch's weight_decay does.
    fn = make_train_step(model, mesh, tx, weight_decay=WEIGHT_DECAY, l2_mask="all")
    batch = jax.device_put({"image": images, "label": labels}, batch_sharding(mesh))
    options = {}
    if not jit_options(args.variant) and "xla_cpu_scheduler_type" in compiler_options():
        options = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_DEFAULT"}
    compiled = fn.lower(state, batch).compile(compiler_options=options or None)
    seconds = time.perf_counter() - start
    box = [state]

    def step():
        box[0], metrics = compiled(box[0], batch)
        return metrics["loss"]

    step.compiled = compiled
    return step, seconds


def ready(value: Any) -> None:
    """Wait until a JAX or PyTorch result is computed (PyTorch eager already is)."""
    if hasattr(value, "block_until_ready"):
        value.block_until_ready()
    elif isinstance(value, dict | tuple | list):
        import jax

        jax.block_until_ready(value)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of fn takes until its result is ready."""
    start = time.perf_counter()
    ready(fn())
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- measurements


def compare(arch: str, task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time both sides alternately; medians, ratio and per-round ratio range."""
    torch_fn = torch_side(arch, task, args)
    torch_first = timed(torch_fn)
    jax_fn, compile_s = jax_side(arch, task, args)
    jax_first = timed(jax_fn)
    times: dict[str, list[float]] = {"jax": [], "torch": []}
    round_ratios = []
    for r in range(args.rounds):
        order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
        this_round = {}
        for side in order:
            fn = jax_fn if side == "jax" else torch_fn
            this_round[side] = [timed(fn) for _ in range(args.reps)]
            times[side] += this_round[side]
        round_ratios.append(
            statistics.median(this_round["jax"]) / statistics.median(this_round["torch"])
        )
    jax_s, torch_s = statistics.median(times["jax"]), statistics.median(times["torch"])
    return {
        "arch": arch,
        "task": task,
        "jax_s": jax_s,
        "torch_s": torch_s,
        "ratio": jax_s / torch_s,
        "round_ratio_min": min(round_ratios),
        "round_ratio_max": max(round_ratios),
        "jax_compile_s": compile_s,
        "jax_first_call_s": jax_first,
        "torch_first_call_s": torch_first,
        "jax_images_per_s": args.batch / jax_s,
        "torch_images_per_s": args.batch / torch_s,
        "times": times,
    }


def child_main(args: argparse.Namespace) -> None:
    """Memory child: build one side, run warm-up plus two calls, print its peak RSS as JSON."""
    side, task, arch = args.child
    if side == "torch":
        fn = torch_side(arch, task, args)
    else:
        fn = jax_side(arch, task, args)[0]
    for _ in range(3):
        ready(fn())
    print(json.dumps({"peak_bytes": peak_rss()}))


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM).

    Not getrusage: a child's ru_maxrss starts from its parent's RSS at fork (Linux carries it
    over exec), so a child of this big process would report at least the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory needs Linux")


def peak_memory(side: str, task: str, arch: str, argv: list[str]) -> int:
    """Peak resident set size in bytes of a fresh process running `side`'s task."""
    cmd = [sys.executable, __file__, *argv, "--child", side, task, arch]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {side} {task} {arch} failed:\n{done.stderr[-2000:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"])


def child_argv(args: argparse.Namespace) -> list[str]:
    """The options a memory child needs to rebuild the same setting."""
    argv = ["--batch", str(args.batch), "--size", str(args.size), "--dtype", args.dtype]
    argv += ["--threads", str(args.threads), "--variant", args.variant, "--step", args.step]
    if args.xla_flags:
        argv += ["--xla-flags", args.xla_flags]
    return argv


# ----------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import jax
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "jax_backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the results."""
    head = (
        "| arch | task | vgg-flax s | torchvision s | ratio | round ratios | compile s "
        "| vgg-flax peak GB | torchvision peak GB | memory ratio |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        mem = ["-", "-", "-"]
        if "jax_peak_bytes" in r:
            mem = [
                f"{r['jax_peak_bytes'] / 1e9:.2f}",
                f"{r['torch_peak_bytes'] / 1e9:.2f}",
                f"{r['jax_peak_bytes'] / r['torch_peak_bytes']:.2f}",
            ]
        rows.append(
            f"| {r['arch']} | {r['task']} | {r['jax_s']:.3f} | {r['torch_s']:.3f} "
            f"| **{r['ratio']:.2f}** | {r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f} "
            f"| {r['jax_compile_s']:.1f} | {' | '.join(mem)} |"
        )
    return head + "\n".join(rows) + "\n"


def write_markdown(path: Path, label: str, report: dict[str, Any]) -> None:
    """Replace (or append) this label's block in the markdown file; other text is kept."""
    m, a = report["machine"], report["settings"]
    lines = [
        *([report["note"], ""] if report["note"] else []),
        f"`{report['command']}`",
        "",
        f"{m['date_utc']} UTC on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"jax {m['jax']}, torch {m['torch']}; batch {a['batch']}, {a['size']}x{a['size']}, "
        f"{a['dtype']}, variant `{a['variant']}`, {a['step']} step, {a['rounds']} rounds x "
        f"{a['reps']} calls "
        f"per side, torch threads {a['threads']}"
        + (f", XLA_FLAGS `{m['xla_flags']}`" if m["xla_flags"] else "")
        + ".",
        "",
        table(report["results"]),
    ]
    replace_block(path, label, lines)


def replace_block(path: Path, label: str, lines: list[str]) -> None:
    """Write `lines` under a "### label" heading in the markdown file, replacing that label's
    earlier block (or appending one); text outside the blocks is kept. Written atomically."""
    from vgg_flax.weights.atomic import atomic_write

    block = "\n".join([MARK.format(label), f"### {label}", "", *lines, END.format(label)])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = text.find(MARK.format(label)), text.find(END.format(label))
    if start >= 0 and end >= 0:
        text = text[:start] + block + text[end + len(END.format(label)) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print (and optionally save) the results."""
    args = parse_args(argv)
    setup_xla(args)
    if args.child:  # a JAX child does not load PyTorch, so its memory is JAX's alone
        child_main(args)
        return
    import torch  # noqa: F401  # before anything that may load TensorFlow (docs/environment.md)

    results = []
    for arch in args.arch:
        for task in args.task:
            result = compare(arch, task, args)
            if args.memory:
                for side in ("jax", "torch"):
                    peak = peak_memory(side, task, arch, child_argv(args))
                    result[f"{side}_peak_bytes"] = peak
            results.append(result)
            mem = ""
            if args.memory:
                mem = (
                    f"  peak {result['jax_peak_bytes'] / 1e9:.2f} GB vs "
                    f"{result['torch_peak_bytes'] / 1e9:.2f} GB"
                )
            print(
                f"{arch:9s} {task:7s} vgg-flax {result['jax_s']:.3f} s  torchvision "
                f"{result['torch_s']:.3f} s  ratio {result['ratio']:.2f} "
                f"(rounds {result['round_ratio_min']:.2f}-{result['round_ratio_max']:.2f})  "
                f"compile {result['jax_compile_s']:.1f} s{mem}",
                flush=True,
            )
    command = "python benchmarks/models.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "json")},
        "note": args.note,
        "results": results,
    }
    if args.json == "-":
        print(json.dumps(report, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.markdown:
        write_markdown(Path(args.markdown), args.label or args.dtype, report)


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
