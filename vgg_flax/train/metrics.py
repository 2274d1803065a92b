"""Watching a run: a progress bar, TensorBoard event files, a JSON-lines log and a final plot.

Only process 0 writes; the others get a writer that does nothing, so the loop needs no guards.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"


class MetricsWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tb`."""

    def __init__(self, workdir: str, *, enabled: bool | None = None) -> None:
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # imported here: only process 0 needs it

            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: Mapping[str, float], *, kind: str) -> None:
        """Record `scalars` of `kind` ("train" or "eval") at `step` in both outputs."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            self._tb.add_scalar(f"{kind}/{name}", float(value), int(step))

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a resumed run's repeated steps keep the last one."""
    records: dict[tuple[str, int], dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                records[(record["kind"], record["step"])] = record
    return sorted(records.values(), key=lambda r: (r["step"], r["kind"]))


def plot(path: str, out: str) -> str:
    """Draw loss, accuracy and learning rate over steps from a metrics.jsonl file into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    records = read_metrics(path)

    def series(kind: str, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in records if r["kind"] == kind and math.isfinite(r.get(key, math.nan))]
        return [r["step"] for r in rows], [r[key] for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(*series("train", "loss"), label="train loss (with L2 term)")
    axes[0].plot(*series("train", "cross_entropy"), label="train cross-entropy")
    axes[0].plot(*series("eval", "loss"), "o-", label="eval loss")
    axes[1].plot(*series("train", "accuracy"), label="train accuracy (batch)")
    axes[1].plot(*series("eval", "accuracy"), "o-", label="eval top-1")
    axes[2].plot(*series("train", "learning_rate"), label="learning rate")
    axes[2].set_yscale("log")
    for ax, title in zip(axes, ("loss", "accuracy", "learning rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
