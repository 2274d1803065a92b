"""`vgg-flax similarity REF DIST`: LPIPS, DISTS, content and style distances of image pairs.

REF and DIST are two image files, or two folders whose images are paired by relative path (a
reference without its distorted namesake is an error before anything runs). Prints a table of
the scores per pair and their means; `--json PATH` and `--csv PATH` write them too. Pairs of one
size run in batches (`--batch-size`, or sized from `--memory-gb`); a distorted image of another
size than its reference is refused, or with `--sizes resize` resized to it. `--heatmaps DIR`
writes each pair's spatial LPIPS map, of the input's size, as DIR/<relative path>.png.

An unreadable image stops the run with an error naming it; the pairs scored before it are kept:
the JSON/CSV files are written at the end, also after such an error or any other stop (`--write
end`), or rewritten after every batch (`--write each`, for long runs), and say whether the run
completed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any

from vgg_flax.cli import add_subcommand

DEFAULT_METRICS = ("lpips", "dists")
# Bytes of activations a pair holds at once per pixel of its images: both images through the
# trunk's widest full-resolution layers (64 channels, float32), a few buffers live together.
BYTES_PER_PAIR_PIXEL = 2 * 64 * 4 * 8


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `vgg-flax similarity`."""
    from vgg_flax.perceptual.similarity import METRICS, SIZES

    parser = add_subcommand(
        subparsers, "similarity", "LPIPS, DISTS, content and style scores of image pairs", __doc__
    )
    parser.add_argument("reference", help="reference image, or folder of them")
    parser.add_argument("distorted", help="distorted image, or folder (same relative paths)")
    parser.add_argument(
        "--metrics", nargs="+", choices=METRICS, default=list(DEFAULT_METRICS), metavar="METRIC",
        help=f"scores to compute, of {', '.join(METRICS)}",
    )  # fmt: skip
    parser.add_argument(
        "--trunk",
        default=None,
        help="VGG-16 weights: a pretrained name, a .pth/.h5/.caffemodel file or a checkpoint "
        "directory (default: torchvision's vgg16, downloaded once)",
    )
    parser.add_argument("--sizes", choices=SIZES, default="refuse", help="pairs of two sizes")
    parser.add_argument("--batch-size", type=int, default=0, help="pairs per batch (0: auto)")
    parser.add_argument(
        "--memory-gb", type=float, default=2.0, help="activation memory an auto batch may use"
    )
    parser.add_argument("--json", metavar="PATH", help="write the scores as JSON")
    parser.add_argument("--csv", metavar="PATH", help="write the scores as CSV")
    parser.add_argument(
        "--write",
        choices=("end", "each"),
        default="end",
        help="write --json/--csv at the end (also after an error) or after every batch",
    )
    parser.add_argument("--heatmaps", metavar="DIR", help="write spatial LPIPS maps as PNGs")
    parser.add_argument(
        "--heatmap-scale", type=float, default=1.0, help="LPIPS value shown brightest"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def batch_size(args: argparse.Namespace, height: int, width: int) -> int:
    """Pairs per batch: --batch-size, or as many as --memory-gb holds at this size (1..64)."""
    if args.batch_size > 0:
        return args.batch_size
    fits = int(args.memory_gb * 2**30 // (BYTES_PER_PAIR_PIXEL * height * width))
    return max(1, min(64, fits))


def summary(metrics: tuple[str, ...], rows: list[dict[str, Any]], error: str | None) -> dict:
    """The JSON record: every scored pair, the means over them, and how the run ended."""
    means = {name: sum(row[name] for row in rows) / len(rows) for name in metrics} if rows else {}
    return {"metrics": list(metrics), "pairs": rows, "mean": means, "complete": error is None,
            "error": error}  # fmt: skip


def write_outputs(args: argparse.Namespace, record: dict) -> None:
    """Write --json and --csv (atomically: a reader never sees half a file)."""
    from vgg_flax.weights.atomic import atomic_write

    if args.json:
        with atomic_write(args.json, "w") as file:
            json.dump(record, file, indent=2)
    if args.csv:
        columns = ["name", "reference", "distorted", *record["metrics"]]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(record["pairs"])
        if record["pairs"]:
            writer.writerow({"name": "mean", **record["mean"]})
        with atomic_write(args.csv, "w") as file:
            file.write(text.getvalue())


def format_table(record: dict) -> str:
    """The scores as a plain text table, one pair a row, then the means."""
    metrics = record["metrics"]
    rows = [[row["name"], *(f"{row[m]:.4f}" for m in metrics)] for row in record["pairs"]]
    if rows:
        rows.append(["mean", *(f"{record['mean'][m]:.4f}" for m in metrics)])
    header = ["pair", *metrics]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    top = "  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True))
    return "\n".join([top, *lines])


def run(args: argparse.Namespace) -> int:
    """Score every pair; print the table; write the files (see the module docstring)."""
    import numpy as np
    from tqdm import tqdm

    from vgg_flax.perceptual.similarity import Scorer, image_pairs, read_pair
    from vgg_flax.weights.atomic import check_output

    pairs = image_pairs(args.reference, args.distorted)  # missing pairs: before any work
    for path in (args.json, args.csv):
        if path:
            check_output(path)
    if args.heatmaps:
        os.makedirs(args.heatmaps, exist_ok=True)
    scorer = Scorer(args.metrics, args.trunk, heatmaps=bool(args.heatmaps))
    rows: list[dict[str, Any]] = []
    batch: list[tuple[str, str, str, Any, Any]] = []

    def flush() -> None:
        refs, dists = np.stack([b[3] for b in batch]), np.stack([b[4] for b in batch])
        scores = scorer(refs, dists)
        maps = scorer.heatmap(refs, dists) if args.heatmaps else None
        for i, (name, ref, dist, *_) in enumerate(batch):
            rows.append({"name": name, "reference": ref, "distorted": dist,
                         **{m: float(scores[m][i]) for m in scorer.metrics}})  # fmt: skip
            if maps is not None:
                save_heatmap(maps[i], os.path.join(args.heatmaps, name), args.heatmap_scale)
        progress.update(len(batch))
        batch.clear()
        if args.write == "each":
            write_outputs(args, summary(scorer.metrics, rows, "incomplete: still running"))

    error = None
    progress = tqdm(total=len(pairs), unit="pair", file=sys.stderr, disable=args.no_progress)
    try:
        for name, ref_path, dist_path in pairs:
            try:
                ref, dist = read_pair(ref_path, dist_path, args.sizes)
            except ValueError:
                if batch:  # the pairs read before the bad one are scored, then the error
                    flush()
                raise
            if batch and batch[0][3].shape != ref.shape:
                flush()
            batch.append((name, ref_path, dist_path, ref, dist))
            if len(batch) >= batch_size(args, *ref.shape[:2]):
                flush()
        if batch:
            flush()
    except BaseException as failure:  # any stop (a bad file, a crash, Ctrl-C) is recorded
        error = str(failure) if isinstance(failure, ValueError) else repr(failure)
        raise
    finally:
        progress.close()
        record = summary(scorer.metrics, rows, error)
        write_outputs(args, record)
        if rows:
            print(format_table(record))
    return 0


def save_heatmap(values: Any, name: str, scale: float) -> None:
    """Write one (H, W) map as `name` with its suffix replaced by .png."""
    from PIL import Image

    from vgg_flax.perceptual.similarity import heatmap_image

    path = os.path.splitext(name)[0] + ".png"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(heatmap_image(values, scale)).save(path)
