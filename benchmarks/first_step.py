"""Time to first result: the demo's training reaches its first step, with a cold and a warm cache.

    .venv/bin/python benchmarks/first_step.py [--config experiments/configs/digits.py] [--runs 2]

Runs the demo's training (`make demo`'s config, stopped after its first step) `--runs` times in
fresh processes and fresh workdirs, all sharing one new, empty persistent compilation cache
(`VGG_FLAX_COMPILE_CACHE`, vgg_flax/compile_cache.py). The first run compiles and fills the
cache; the later ones read it. Prints, per run, the time from the start of `train()` to the end
of the first step (summary.json's `first_step_s`) and the whole process's wall time, then the
ratio of the second run to the first (target: at most 1/3). `--markdown PATH` rewrites the
`first_step` block of a markdown file (benchmarks/BENCHMARKS.md).
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
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    summary = json.loads((workdir / "summary.json").read_text())
    return {"first_step_s": summary["first_step_s"], "process_s": wall}


def table(results: list[dict[str, float]], config: str) -> str:
    """The runs as a markdown table, with the second-to-first ratio."""
    lines = [
        f"Config {config}, one step, a new compilation cache shared by the runs.",
        "",
        "| run | cache | first step (s) | process (s) |",
        "|---|---|---|---|",
    ]
    for index, result in enumerate(results, 1):
        cache = "empty" if index == 1 else "filled"
        lines.append(
            f"| {index} | {cache} | {result['first_step_s']:.1f} | {result['process_s']:.1f} |"
        )
    if len(results) > 1:
        ratio = results[1]["first_step_s"] / results[0]["first_step_s"]
        lines += ["", f"Second run / first run, time to first step: {ratio:.2f} (target <= 0.33)"]
    return "\n".join(lines)


def main() -> None:
    """Parse the flags, run the demo's first step with a cold then a warm cache, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/configs/digits.py")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--markdown", help="rewrite the first_step block of this markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vgg-flax-first-step-") as tmp:
        cache = Path(tmp, "cache")
        results = [run_once(args.config, Path(tmp, f"run{i}"), cache) for i in range(args.runs)]
    text = table(results, args.config)
    print(text)
    if args.markdown:
        replace_block(Path(args.markdown), "first_step", text.splitlines())


if __name__ == "__main__":
    main()
