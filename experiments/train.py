"""Train one experiment config: `python -m experiments.train --config CONFIG.py --workdir DIR`.

Any field can be overridden on the command line (`--config.batch_size=64`,
`--config.optim.learning_rate=0.05`); `--config CONFIG.py:local` selects its local mode. A run
resumes from DIR's latest checkpoint when restarted with the same DIR.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (input pipeline only): quiet

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "experiment config file (e.g. digits.py)")
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, plot, final model")
flags.mark_flags_as_required(["config", "workdir"])


def summary_lines(summary: dict) -> list[str]:
    """The end-of-run summary as a few readable lines."""
    evaluation = summary.get("eval") or {}
    lines = [
        f"steps {summary['step']}/{summary['total_steps']} ({summary['epochs']:.1f} epochs) "
        f"in {summary['wall_s']:.0f} s, {summary['images_per_s']:.1f} images/s at the end",
        f"learning rate drops: {summary['learning_rate_drops']}, "
        f"final rate {summary['final_learning_rate']:g}",
    ]
    if evaluation:
        lines.append(
            f"eval: top-1 accuracy {evaluation['accuracy']:.4f}, top-5 {evaluation['top5']:.4f}, "
            f"loss {evaluation['loss']:.4f} on {evaluation['examples']:.0f} images"
        )
    lines.append(
        f"workdir {summary['workdir']}: model/, checkpoints/, metrics.jsonl, tb/, "
        "metrics.png, summary.json"
    )
    return lines


def main(argv: list[str]) -> int:
    """Run the trainer on the parsed config and print its summary."""
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    from vgg_flax.train.trainer import train

    summary = train(flags.FLAGS.config, flags.FLAGS.workdir)
    print("\n".join(summary_lines(summary)))
    print(json.dumps(summary["eval"]))
    return 0


def print_help() -> None:
    """The usage and this script's flags (absl's --help would exit with status 1)."""
    print(__doc__)
    print(flags.FLAGS.main_module_help())


if __name__ == "__main__":
    if any(arg in ("-h", "--help", "--helpshort") for arg in sys.argv[1:]):
        print_help()
        sys.exit(0)
    app.run(main)
