"""Converting a torchvision checkpoint beside torch's own `torch.load`: wall time and peak memory.

Writes a vgg16-sized state dict (seeded random values, 528 MB) with torch.save, then, in a fresh
child process per measurement (so each peak is its own), times:
  torch.load        torch's loader (the reference)
  load_pth          vgg-flax's reader alone (copies every storage, checks CRCs)
  from_torchvision  vgg-flax's reader and converter: the file's tensors to Flax variables
  vgg_flax.load     the one loader (`vgg_flax.load(path, arch)`): reader, converter, the model,
                    and the variables as JAX arrays
and records how far the peak resident memory rises above the process's size after its
imports. Sides alternate round by round; the file is read just before each run so every side
finds it in the page cache. Targets (issue 3): from_torchvision within 1.5x torch.load's time,
peak memory at most 2.5x the file size (from_torchvision's; vgg_flax.load is shown beside it).

    .venv/bin/python benchmarks/convert.py                 # vgg16, zip format, 3 rounds
    .venv/bin/python benchmarks/convert.py --legacy --arch vgg19_bn --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SIDES = ("torch.load", "load_pth", "from_torchvision", "vgg_flax.load")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def _warm(path: str) -> None:
    # Read the file just before each side runs: this machine reclaims idle page cache quickly,
    # and each side should find the file in memory alike.
    with open(path, "rb") as file:
        while file.read(1 << 24):
            pass


def child(side: str, path: str, arch: str) -> None:
    """Run one side once in this process and print {"seconds", "peak_mb"} as JSON."""
    import torch  # both sides import it, so imports weigh the same on the baseline

    import vgg_flax

    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current resident size
    start_rss = _status_mb("VmRSS")
    start = time.perf_counter()
    if side == "torch.load":
        result = torch.load(path, weights_only=True)
    elif side == "load_pth":
        result = vgg_flax.load_pth(path)
    elif side == "from_torchvision":
        result = vgg_flax.from_torchvision(path, arch)
    else:
        result = vgg_flax.load(path, arch)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": _status_mb("VmHWM") - start_rss}))
    del result


def write_checkpoint(arch: str, folder: str, legacy: bool) -> str:
    """A seeded random torchvision `arch` state dict saved with torch.save; returns its path."""
    import torch
    import torchvision

    torch.manual_seed(0)
    with torch.device("meta"):
        net = torchvision.models.get_model(arch, weights=None)
    state = {key: torch.randn(value.shape) for key, value in net.state_dict().items()}
    path = os.path.join(folder, f"{arch}.pth")
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def main() -> None:
    """Measure every side `--rounds` times and print medians and the target ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--legacy", action="store_true", help="torch's pre-1.6 file format")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.arch)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = write_checkpoint(args.arch, folder, args.legacy)
        size_mb = os.path.getsize(path) / 2**20
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
        for _ in range(args.rounds):
            for side in SIDES:
                _warm(path)
                command = [sys.executable, __file__, "--arch", args.arch, "--child", side, path]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    fmt = "legacy" if args.legacy else "zip"
    print(f"{args.arch} checkpoint, {fmt} format, {size_mb:.0f} MB; medians of {args.rounds} runs")
    print(f"{'side':<18} {'seconds':>8} {'peak MB':>8} {'x torch time':>13} {'peak / file':>12}")
    reference = statistics.median(r["seconds"] for r in runs["torch.load"])
    for side in SIDES:
        seconds = statistics.median(r["seconds"] for r in runs[side])
        peak = statistics.median(r["peak_mb"] for r in runs[side])
        ratio, memory = seconds / reference, peak / size_mb
        print(f"{side:<18} {seconds:8.2f} {peak:8.0f} {ratio:13.2f} {memory:12.2f}")


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
