"""Where a training step's time goes: vgg-flax per layer and per operation kind, beside PyTorch.

vgg-flax: one traced step (jax.profiler), each XLA operation attributed to its layer through
the compiled HLO's op_name metadata and split into forward and backward; "outside the model"
is the loss, the optimiser update and every traced event XLA does not tie to an operation of
the model. PyTorch: one profiled step (torch.profiler), self CPU time per aten operation.
Times are summed over threads where operations overlap, so they are shares, not wall time.

    .venv/bin/python benchmarks/layer_profile.py --markdown benchmarks/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

import torch  # before anything that may load TensorFlow (docs/environment.md)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import jax_side, parse_args, replace_block, torch_side  # noqa: E402

LAYER = re.compile(r"/(conv\d_\d|bn\d_\d|fc\d|pool\d|relu\d_\d|relu\d)/")


def jax_profile(args: argparse.Namespace, arch: str) -> dict[tuple[str, str], float]:
    """Seconds per (layer, phase) of one vgg-flax training step."""
    import jax

    step, _ = jax_side(arch, "train", args)
    step()
    hlo = step.compiled.as_text()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            jax.block_until_ready(step())
        trace = next(Path(tmp).rglob("perfetto_trace.json.gz"))
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    op_names = dict(re.findall(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]*)\"", hlo))
    totals: dict[tuple[str, str], float] = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith(("Thunk", "$", "Slinky")):
            continue
        op = op_names.get(name, "")
        match = LAYER.search(op + "/")
        layer = match.group(1) if match else "other"
        layer = re.sub(r"^relu(\d)", r"conv\1", layer) if layer.startswith("relu") else layer
        phase = "backward" if "transpose(" in op else ("forward" if "VGG" in op else "outside")
        totals[(layer, phase)] += event.get("dur", 0) / 1e6
    return totals


def torch_profile(args: argparse.Namespace, arch: str) -> dict[str, float]:
    """Self CPU seconds per aten operation of one torchvision training step."""
    step = torch_side(arch, "train", args)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def main() -> None:
    """Profile both sides once and print (and optionally save) the tables."""
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--markdown", metavar="PATH")
    known, rest = extra.parse_known_args()
    args = parse_args(rest)
    arch = args.arch[0]
    jax_times = jax_profile(args, arch)
    torch_times = torch_profile(args, arch)
    layers = sorted({layer for layer, _ in jax_times}, key=_layer_order)
    lines = [
        f"`python benchmarks/layer_profile.py {' '.join(sys.argv[1:])}` ({arch}, "
        f"batch {args.batch}, "
        f"{args.size}x{args.size}, {args.dtype}; one step each, seconds summed over threads)",
        "",
        "| vgg-flax layer | forward s | backward s | outside the model s |",
        "|---|---|---|---|",
    ]
    for layer in layers:
        cells = [
            f"{jax_times.get((layer, p), 0.0):.3f}" for p in ("forward", "backward", "outside")
        ]
        lines.append(f"| {layer} | {' | '.join(cells)} |")
    total = sum(jax_times.values())
    lines += ["", f"vgg-flax total: {total:.2f} s", "", "| PyTorch operation | self s |"]
    lines.append("|---|---|")
    top = sorted(torch_times.items(), key=lambda kv: -kv[1])[:12]
    lines += [f"| {key} | {value:.3f} |" for key, value in top]
    lines += ["", f"PyTorch total: {sum(torch_times.values()):.2f} s"]
    print("\n".join(lines))
    if known.markdown:
        replace_block(Path(known.markdown), "profile", lines)


def _layer_order(layer: str) -> tuple[int, str]:
    digits = re.findall(r"\d+", layer)
    return (int(digits[0]) if digits else 99, layer)


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
