"""Time to first result: the demo's training reaches its first step, with a cold and a warm cache.

    .venv/bin/python benchmarks/first_step.py [--config experiments/configs/digits.py] [--runs 2]
        [--pairs 1]

Runs the demo's training (`make demo`'s config, stopped after its first step) `--runs` times in
fresh processes and fresh workdirs, all sharing one new, empty persistent compilation cache
(`VGG_FLAX_COMPILE_CACHE`, vgg_flax/compile_cache.py). The first run compiles and fills the
cache; the later ones read it. Prints, per run, the time from the start of `train()` to the end
of the first step (summary.json's `first_step_s`), the whole process's wall time and the
machine's 1-minute load average when it started (other work on a shared machine slows a run),
then the ratio of the second run to the first (target: at most 1/3). `--pairs N` repeats that
with N new caches, one after the other, and gives each ratio and their range. `--markdown PATH`
rewrites the `first_step` block of a markdown file (benchmarks/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import replace_block  # noqa: E402  (the benchmarks' one markdown writer)

ROOT = Path(__file__).resolve().parent.parent


def run_once(config: str, workdir: Path, cache: Path) -> dict[str, float]:
    """One training process stopped after step 1: its first-step time and wall time."""
    env = {**os.environ, "VGG_FLAX_COMPILE_CACHE": str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the cache under test, not one set elsewhere
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        config,
        "--workdir",
        str(workdir),
        "--config.total_steps=1",
        "--config.eval_batches=1",
    ]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    summary = json.loads((workdir / "summary.json").read_text())
    return {"first_step_s": summary["first_step_s"], "process_s": wall, "load": load}


def table(pairs: list[list[dict[str, float]]], config: str) -> str:
    """The runs of each cache as a markdown table, with each second-to-first ratio."""
    lines = [
        f"Config {config}, one step; the runs of a pair share a new compilation cache.",
        "",
        "| pair | run | cache | first step (s) | process (s) | load |",
        "|---|---|---|---|---|---|",
    ]
    ratios = []
    for pair, results in enumerate(pairs, 1):
        for index, result in enumerate(results, 1):
            cache = "empty" if index == 1 else "filled"
            lines.append(
                f"| {pair} | {index} | {cache} | {result['first_step_s']:.1f} "
                f"| {result['process_s']:.1f} | {result['load']:.1f} |"
            )
        if len(results) > 1:
            ratios.append(results[1]["first_step_s"] / results[0]["first_step_s"])
    if ratios:
        listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        spread = f" (range {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        lines += [
            "",
            f"Second run / first run, time to first step: {listed}{spread} (target <= 0.33)",
        ]
    return "\n".join(lines)


def main() -> None:
    """Parse the flags, run the demo's first step with a cold then a warm cache, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/configs/digits.py")
    parser.add_argument("--runs", type=int, default=2, help="runs sharing one cache")
    parser.add_argument("--pairs", type=int, default=1, help="how many new caches, one by one")
    parser.add_argument("--markdown", help="rewrite the first_step block of this markdown file")
    args = parser.parse_args()
    pairs = []
    for _ in range(args.pairs):
        with tempfile.TemporaryDirectory(prefix="vgg-flax-first-step-") as tmp:
            cache = Path(tmp, "cache")
            pairs.append(
                [run_once(args.config, Path(tmp, f"run{i}"), cache) for i in range(args.runs)]
            )
    text = table(pairs, args.config)
    print(text)
    if args.markdown:
        replace_block(Path(args.markdown), "first_step", text.splitlines())


if __name__ == "__main__":
    main()
