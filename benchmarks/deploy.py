"""What int8 costs on the digits demo's model: agreement, accuracy, file size, CPU speed; one run.

float32, int8-weights and int8 (vgg_flax.inference.quantize; int8 calibrated on the first 64
training digits) side by side on the 360 test digits at 32x32 (the demo's own size, classify
mode, which its evaluation uses there):

- top-1 agreement (same class as float32) and top-5 agreement (same set of five), top-1 accuracy;
- the size of each exported file: StableHLO (`jax.export`, CPU lowering) and ONNX (float32 and
  int8-weights; int8 activations have no ONNX export, see vgg_flax.inference.onnx);
- seconds per batch of `--batch` test digits: the jitted `apply` of each (XLA:CPU) and the ONNX
  files in onnxruntime (CPU), the variants alternating round by round, medians of `--rounds`.

    python benchmarks/deploy.py --checkpoint runs/demo/model --markdown benchmarks/BENCHMARKS.md
    python benchmarks/deploy.py --train /tmp/demo ...   # train the demo first (make demo's run)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch  # noqa: F401  # before anything that may load TensorFlow (docs/environment.md)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("float32", "int8-weights", "int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "runs/demo/model"), help="the demo's model")
    p.add_argument("--train", default=None, help="train the demo config into this workdir first")
    p.add_argument("--calibration", type=int, default=64, help="training digits that calibrate")
    p.add_argument("--batch", type=int, default=120)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--label", default="deploy")
    p.add_argument("--note", default="")
    return p.parse_args(argv)


def train_demo(workdir: str) -> str:
    """Run the demo's training (experiments/configs/digits.py) into workdir; its model/ path."""
    command = [sys.executable, "-m", "experiments.train", "--config"]
    command += [str(ROOT / "experiments/configs/digits.py"), "--workdir", workdir]
    subprocess.run(command, cwd=ROOT, check=True)
    return os.path.join(workdir, "model")


def median_seconds(run: Any, rounds: int) -> list[float]:
    """Seconds of each of `rounds` calls of run()."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every number of the report."""
    import jax
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    import vgg_flax
    from vgg_flax.data.sources import digits_arrays
    from vgg_flax.inference import export, onnx, quantize
    from vgg_flax.preprocessing import preprocess

    model, variables, _ = vgg_flax.load(args.checkpoint)
    arrays = digits_arrays(32)
    test_images, labels = arrays["test"][0], arrays["test"][1]
    test = np.asarray(preprocess(test_images / np.float32(255), "torchvision"), np.float32)
    folder = tempfile.mkdtemp(prefix="calibration-")
    for i, image in enumerate(arrays["train"][0][: args.calibration]):
        Image.fromarray(image).save(os.path.join(folder, f"{i:03d}.png"))
    nets = {"float32": (model, variables)}
    for mode in quantize.MODES:
        nets[mode] = quantize.quantize_source(model, variables, mode, folder, "torchvision", 32)
    out = tempfile.mkdtemp(prefix="deploy-")
    results: dict[str, dict[str, Any]] = {}
    runs = {}
    logits = {}
    for name, (net, net_variables) in nets.items():
        apply = jax.jit(net.apply)
        logits[name] = np.concatenate(
            [np.asarray(apply(net_variables, test[i : i + args.batch])) for i in range(0, 360, 120)]
        )
        path = os.path.join(out, f"{name}.stablehlo")
        export.export_stablehlo(net, net_variables, path, image_size=32, platforms=("cpu",))
        entry = {"stablehlo_bytes": os.path.getsize(path)}
        entry["variables_bytes"] = quantize.stored_bytes(net_variables)
        batch = test[: args.batch]
        runs[f"{name} jax"] = lambda f=apply, v=net_variables, b=batch: jax.block_until_ready(
            f(v, b)
        )
        if name != "int8":
            onnx_path = os.path.join(out, f"{name}.onnx")
            onnx.to_onnx(net, net_variables, onnx_path, mode="classify", image_size=32)
            entry["onnx_bytes"] = os.path.getsize(onnx_path)
            session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
            runs[f"{name} onnxruntime"] = lambda s=session, b=batch: s.run(None, {"images": b})
        results[name] = entry
    for run in runs.values():  # warm-up: compilation, first calls
        run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for key in order:
            times[key] += median_seconds(runs[key], 1)
    reference = logits["float32"]
    top5 = np.argsort(-reference, axis=1)[:, :5]
    for name, entry in results.items():
        found = logits[name]
        entry["top1_agreement"] = float(np.mean(found.argmax(1) == reference.argmax(1)))
        found5 = np.argsort(-found, axis=1)[:, :5]
        same5 = [set(a) == set(b) for a, b in zip(found5, top5, strict=True)]
        entry["top5_agreement"] = float(np.mean(same5))
        entry["top1_accuracy"] = float(np.mean(found.argmax(1) == labels))
        for side in ("jax", "onnxruntime"):
            key = f"{name} {side}"
            if key in times:
                entry[f"{side}_s"] = float(np.median(times[key]))
    return {"machine": models.machine(), "args": vars(args), "results": results}


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The markdown table of the report."""
    lines = [
        "| model | top-1 agreement | top-5 agreement | top-1 accuracy | weights MB | StableHLO MB "
        "| ONNX MB | XLA:CPU s/batch | onnxruntime s/batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        onnx_mb = f"{r['onnx_bytes'] / 1e6:.2f}" if "onnx_bytes" in r else "-"
        ort_s = f"{r['onnxruntime_s']:.4f}" if "onnxruntime_s" in r else "-"
        lines.append(
            f"| {name} | {r['top1_agreement']:.2%} | {r['top5_agreement']:.2%} | "
            f"{r['top1_accuracy']:.2%} | {r['variables_bytes'] / 1e6:.2f} | "
            f"{r['stablehlo_bytes'] / 1e6:.2f} | {onnx_mb} | {r['jax_s']:.4f} | {ort_s} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    """Train if asked, measure, print, and write the JSON and markdown block if asked."""
    args = parse_args(argv)
    if args.train:
        args.checkpoint = train_demo(args.train)
    report = measure(args)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.markdown:
        m, a = report["machine"], report["args"]
        command = "python benchmarks/deploy.py " + shlex.join(argv or sys.argv[1:])
        lines = [
            *([a["note"], ""] if a["note"] else []),
            f"`{command}`",
            "",
            f"{m['date_utc']} UTC on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
            f"jax {m['jax']}; the 360 test digits at 32x32, int8 calibrated on "
            f"{a['calibration']} training digits; times: medians of {a['rounds']} calls per "
            f"variant (alternating) on a batch of {a['batch']}.",
            "",
            *table(report["results"]),
        ]
        models.replace_block(Path(args.markdown), args.label, lines)


if __name__ == "__main__":
    from vgg_flax import compile_cache

    compile_cache.enable()  # reruns skip compiling (VGG_FLAX_COMPILE_CACHE=off to time it)
    main()
