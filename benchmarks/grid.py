"""The speed grid of issue 16 in one command: every cell a ratio to torchvision in the same run.

Cells: architectures x {224x224 batch 8, 32x32 batch 32} x {float32, bfloat16} x {forward,
training step}, each timed by `benchmarks/models.py` (its `compare`: the two sides alternate
round by round, medians of each side), with the peak RSS of each side in fresh processes of its
own (`models.peak_memory`); then dense evaluation (`benchmarks/evaluate.py`). Cells above the
targets (float32 > 1.0, bfloat16 > 1.2, memory > 1.2) are marked.

    .venv/bin/python benchmarks/grid.py --markdown benchmarks/BENCHMARKS.md       # full grid
    .venv/bin/python benchmarks/grid.py --quick --markdown benchmarks/BENCHMARKS.md
    .venv/bin/python benchmarks/grid.py --arch vgg11_bn --setting 32 --dtype float32 \\
        --task forward --rounds 1 --reps 1 --no-memory --no-evaluate           # one tiny cell

`--quick`: 1 round of 2 calls per side and dense evaluation of 4 images (a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch  # noqa: F401  # before anything that may load TensorFlow (docs/environment.md)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate  # noqa: E402
import models  # noqa: E402

# (size, batch) per setting name: the paper's crop and the CIFAR-size regime.
SETTINGS = {"224": (224, 8), "32": (32, 32)}
GRID_ARCHS = ("vgg11_bn", "vgg16", "vgg19_bn")
# Issue 16's targets: time ratio per dtype, and peak memory.
TIME_TARGET = {"float32": 1.0, "bfloat16": 1.2}
MEMORY_TARGET = 1.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", nargs="+", default=list(GRID_ARCHS), choices=models.ARCHS)
    p.add_argument("--setting", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--dtype", nargs="+", default=list(models.DTYPES), choices=models.DTYPES)
    p.add_argument("--task", nargs="+", default=list(models.TASKS), choices=models.TASKS)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per cell")
    p.add_argument("--reps", type=int, default=2, help="timed calls per side per round")
    p.add_argument("--quick", action="store_true", help="1 round x 2 calls, 4 dense images")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--no-evaluate", action="store_true", help="skip dense evaluation")
    p.add_argument("--evaluate-only", action="store_true", help="only dense evaluation")
    p.add_argument("--eval-arch", default="vgg16", help="dense evaluation's architecture")
    p.add_argument("--eval-images", type=int, default=8, help="dense evaluation's images")
    p.add_argument("--markdown", metavar="PATH", help="rewrite the grid's block in PATH")
    p.add_argument("--label", default="grid", help="name of the markdown block")
    p.add_argument("--note", default="", help="one paragraph printed above the tables")
    p.add_argument("--json", metavar="PATH", help="write every result as JSON")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="run nothing: write one block from the --json files of several partial runs",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.reps, args.eval_images = 1, 2, min(args.eval_images, 4)
    return args


def cell_args(args: argparse.Namespace, setting: str, dtype: str) -> argparse.Namespace:
    """models.py's options for one (setting, dtype) of the grid."""
    size, batch = SETTINGS[setting]
    argv = ["--batch", str(batch), "--size", str(size), "--dtype", dtype]
    return models.parse_args(argv + ["--rounds", str(args.rounds), "--reps", str(args.reps)])


def run_cell(args: argparse.Namespace, arch: str, setting: str, dtype: str, task: str) -> dict:
    """Time one cell (and its peak memory unless --no-memory)."""
    margs = cell_args(args, setting, dtype)
    result = models.compare(arch, task, margs)
    result.update(setting=setting, dtype=dtype, batch=margs.batch, size=margs.size)
    if not args.no_memory:
        for side in ("jax", "torch"):
            peak = models.peak_memory(side, task, arch, models.child_argv(margs))
            result[f"{side}_peak_bytes"] = peak
        result["memory_ratio"] = result["jax_peak_bytes"] / result["torch_peak_bytes"]
    return result


def above(result: dict) -> list[str]:
    """What of this cell is above issue 16's targets."""
    out = []
    if result["ratio"] > TIME_TARGET[result["dtype"]]:
        out.append("time")
    if result.get("memory_ratio", 0.0) > MEMORY_TARGET:
        out.append("memory")
    return out


def grid_table(results: list[dict]) -> list[str]:
    """One markdown row per cell: ratios first, seconds and GB after."""
    lines = [
        "| arch | input | dtype | task | time ratio | round ratios | memory ratio "
        "| vgg-flax s | torchvision s | vgg-flax GB | torchvision GB | above target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mem = ("-", "-", "-")
        if "memory_ratio" in r:
            mem = (
                f"{r['memory_ratio']:.2f}",
                f"{r['jax_peak_bytes'] / 1e9:.2f}",
                f"{r['torch_peak_bytes'] / 1e9:.2f}",
            )
        lines.append(
            f"| {r['arch']} | {r['size']}x{r['size']} b{r['batch']} | {r['dtype']} | {r['task']} "
            f"| **{r['ratio']:.2f}** | {r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f} "
            f"| {mem[0]} | {r['jax_s']:.3f} | {r['torch_s']:.3f} | {mem[1]} | {mem[2]} "
            f"| {', '.join(above(r)) or '-'} |"
        )
    return lines


def run_evaluate(args: argparse.Namespace) -> dict:
    """Dense evaluation (benchmarks/evaluate.py's defaults otherwise): its time ratio."""
    eargs = evaluate.parse_args(["--arch", args.eval_arch, "--images", str(args.eval_images)])
    result = evaluate.measure(eargs)
    result.update(arch=eargs.arch, scales=eargs.scales, batch_size=eargs.batch_size)
    return result


def report_lines(args: argparse.Namespace, command: str, results: list, dense: Any) -> list[str]:
    """The markdown block: command, machine, the grid and the dense evaluation."""
    m = models.machine()
    lines = [*([args.note, ""] if args.note else []), f"`{command}`", ""]
    lines.append(
        f"{m['date_utc']} UTC on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"jax {m['jax']}, torch {m['torch']}; {args.rounds} rounds x {args.reps} calls per side "
        "per cell, torch threads "
        f"{models.parse_args([]).threads}. Ratios: vgg-flax / torchvision (time: medians; "
        f"memory: peak RSS of a fresh process per side). Targets: float32 <= "
        f"{TIME_TARGET['float32']}, bfloat16 <= {TIME_TARGET['bfloat16']}, memory <= "
        f"{MEMORY_TARGET}."
    )
    lines += ["", *grid_table(results), ""]
    if dense is not None:
        lines.append(
            f"Dense evaluation ({dense['arch']}, {dense['images']} images at Q={dense['scales']}, "
            f"flips {dense['flips']}, vgg-flax batches of {dense['batch_size']}): vgg-flax "
            f"{dense['jax_s']:.1f} s, torchvision {dense['torch_s']:.1f} s, time ratio "
            f"**{dense['ratio']:.2f}** (one timed pass each after a warm-up; log-posterior gap "
            f"{dense['max_log_posterior_gap']:.1e})."
        )
    return lines


def merge(args: argparse.Namespace, command: str) -> None:
    """One block from partial runs' JSON files (e.g. run side by side on a loaded machine)."""
    saved = [json.loads(Path(path).read_text()) for path in args.merge]
    # A cell measured again in a later file takes that file's times; a memory measurement
    # only an earlier run made is kept.
    cells: dict[tuple, dict] = {}
    for cell in (cell for run in saved for cell in run["cells"]):
        key = (cell["setting"], cell["dtype"], cell["arch"], cell["task"])
        memory = {k: v for k, v in cells.get(key, {}).items() if "peak" in k or "memory" in k}
        cells[key] = {**memory, **cell}
    order = {name: i for i, name in enumerate([*SETTINGS, *models.DTYPES, *models.ARCHS])}
    results = [cells[key] for key in sorted(cells, key=lambda k: [order.get(x, 0) for x in k])]
    dense = next((run["dense"] for run in saved if run["dense"] is not None), None)
    runs = "; ".join(f"`{run['command']}`" for run in saved)
    note = f"{args.note} " if args.note else ""
    args.note = f"{note}Merged from {len(saved)} runs: {runs}."
    lines = report_lines(args, command, results, dense)
    print("\n".join(lines))
    if args.markdown:
        models.replace_block(Path(args.markdown), args.label, lines)


def main(argv: list[str] | None = None) -> None:
    """Run the grid, print each cell as it finishes, then write the block and JSON if asked."""
    args = parse_args(argv)
    command = "python benchmarks/grid.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.merge:
        merge(args, command.strip())
        return
    results = []
    for setting in [] if args.evaluate_only else args.setting:
        for dtype in args.dtype:
            for arch in args.arch:
                for task in args.task:
                    start = time.perf_counter()
                    r = run_cell(args, arch, setting, dtype, task)
                    results.append(r)
                    if args.json:  # a run cut short still leaves the cells it finished
                        saved = {"command": command.strip(), "cells": results, "dense": None}
                        Path(args.json).write_text(json.dumps(saved, indent=1))
                    if args.markdown:
                        partial = report_lines(args, command.strip(), results, None)
                        models.replace_block(
                            Path(args.markdown), args.label, ["(in progress)", "", *partial]
                        )
                    mem = f"  memory {r['memory_ratio']:.2f}" if "memory_ratio" in r else ""
                    print(
                        f"{arch:9s} {setting:>3s} {dtype:8s} {task:7s} ratio {r['ratio']:.2f} "
                        f"(rounds {r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f}){mem}"
                        f"  [{time.perf_counter() - start:.0f} s]",
                        flush=True,
                    )
    dense = None if args.no_evaluate else run_evaluate(args)
    if dense is not None:
        print(f"dense evaluation {dense['arch']}: time ratio {dense['ratio']:.2f}", flush=True)
    lines = report_lines(args, command.strip(), results, dense)
    print("\n".join(lines))
    if args.json:
        saved = {"command": command.strip(), "cells": results, "dense": dense}
        Path(args.json).write_text(json.dumps(saved, indent=1))
    if args.markdown:
        models.replace_block(Path(args.markdown), args.label, lines)


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
