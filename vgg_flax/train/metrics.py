"""Watching a run: its config, TensorBoard event files, a JSON-lines log and the curves' plot.

`plot_runs` draws several runs in one figure (`python -m experiments.compare`). Only process 0
writes; the others get a writer that does nothing, so the loop needs no guards.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
CONFIG_FILE = "config.json"
# The scalars TensorBoard's HParams dashboard shows beside a run's config (tags of `write`).
HPARAM_METRICS = ("eval/accuracy", "eval/top5", "eval/loss", "train/loss")


def _summary_writer(logdir: str) -> Any:
    """tensorboardX's SummaryWriter for `logdir`, imported without importing torch.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors, which
    this writer never gets: seconds of every run's start-up. While tensorboardX loads, a None in
    sys.modules makes its `import torch` fail as if torch were absent (a torch imported before
    is used as it is).
    """
    import sys

    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter
    else:
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            from tensorboardX import SummaryWriter
        finally:
            del sys.modules["torch"]
    return SummaryWriter(logdir)


class MetricsWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tb`."""

    def __init__(self, workdir: str, *, enabled: bool | None = None) -> None:
        import jax  # here, so that reading and plotting metrics (experiments.compare) need no JAX

        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = workdir
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._tb = _summary_writer(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: Mapping[str, float], *, kind: str) -> None:
        """Record `scalars` of `kind` ("train" or "eval") at `step` in both outputs."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            self._tb.add_scalar(f"{kind}/{name}", float(value), int(step))

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's config: `workdir/config.json` (atomic) and TensorBoard hparams."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams

        from vgg_flax.weights.atomic import atomic_write

        with atomic_write(os.path.join(self.workdir, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True, default=str)
        # In tb/ itself, beside the scalars, so the HParams dashboard finds the metrics' values.
        experiment, session_start, _ = hparams(
            flat_hparams(config), dict.fromkeys(HPARAM_METRICS, 0.0)
        )
        self._tb.file_writer.add_summary(experiment)
        self._tb.file_writer.add_summary(session_start)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()


def bar_fields(step_metrics: Mapping[str, float], images_per_s: float) -> dict[str, str]:
    """The progress bar's fields: cross-entropy and the L2 term apart (their sum is the loss
    minimised, which would read as a poor fit: 4.1 where the data term is 0.1), the learning
    rate and the throughput."""
    return {
        "xent": f"{step_metrics['cross_entropy']:.3f}",
        "l2": f"{step_metrics['l2']:.3f}",
        "lr": f"{step_metrics['learning_rate']:.2g}",
        "img_s": f"{images_per_s:.1f}",
    }


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | float | str]:
    """`config` flattened to dotted names ("optim.learning_rate") with values TensorBoard's
    hparams take: booleans, numbers and strings; other values (lists, None) as JSON text."""
    flat: dict[str, bool | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a resumed run's repeated steps keep the last one."""
    records: dict[tuple[str, int], dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                records[(record["kind"], record["step"])] = record
    return sorted(records.values(), key=lambda r: (r["step"], r["kind"]))


# The curves drawn: (panel, record kind, key, legend, line style); one colour per run.
CURVES = (
    (0, "train", "loss", "train loss (with L2 term)", "-"),
    (0, "train", "cross_entropy", "train cross-entropy", ":"),
    (0, "eval", "loss", "eval loss", "o-"),
    (1, "train", "accuracy", "train accuracy (batch)", "-"),
    (1, "eval", "accuracy", "eval top-1", "o-"),
    (1, "eval", "top5", "eval top-5", "s--"),
    (2, "train", "learning_rate", "learning rate", "-"),
)
PANELS = ("loss", "accuracy", "learning rate")


def plot(path: str, out: str) -> str:
    """Draw loss, accuracy and learning rate over steps from a metrics.jsonl file into a PNG."""
    return plot_runs({"": path}, out)


def plot_runs(runs: Mapping[str, str], out: str) -> str:
    """Draw the curves of several runs ({label: metrics.jsonl path}) into one PNG at `out`.

    Each run has its own colour and its label in the legend (a single run with the label ""
    gets one colour per curve instead); curves a run did not record are left out.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4))
    for index, (label, path) in enumerate(runs.items()):
        records = read_metrics(path)
        colour = f"C{index}" if len(runs) > 1 or label else None
        for panel, kind, key, legend, style in CURVES:
            rows = [r for r in records if r["kind"] == kind and math.isfinite(r.get(key, math.nan))]
            if rows:
                name = f"{label}: {legend}" if label else legend
                steps, values = [r["step"] for r in rows], [r[key] for r in rows]
                axes[panel].plot(steps, values, style, color=colour, label=name)
    axes[PANELS.index("learning rate")].set_yscale("log")
    for ax, title in zip(axes, PANELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
