"""The embedded default (`make demo`): VGG-A on scikit-learn's digits, 32x32, on a laptop CPU.

Run:   python -m experiments.train --config experiments/configs/digits.py --workdir runs/demo
Aims for: at least 95% top-1 accuracy on the 360 test digits within 10 minutes on 2 CPU cores
(measured by `make demo`, runs/demo/summary.json: 98.6% after 3 epochs, 132 steps; 3.8 minutes
of training on a 2-core CPU, as README.md and docs/training.md say).
Full-width VGG-A with BatchNorm: the paper's recipe (no BatchNorm, N(0, 0.01) init, lr 1e-2,
plateau drops) needs far more than the 3 epochs this budget allows. So: torchvision's init,
lr 3e-3 after a 20-step warm-up, divided by 10 after 2 epochs (the "step" schedule; a plateau
rule has no room to act in 3 evaluations), batch 32; SGD momentum 0.9, L2 5e-4 and dropout 0.5
as in the paper.
"""

from __future__ import annotations

import ml_collections

from vgg_flax.train import base_config


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The demo config; mode "local" is a two-step run."""
    config = base_config.paper_config("A")
    # Unit-scale inputs (torchvision's normalisation) instead of 0-255 minus the mean.
    config.data = base_config.data_fields(source="digits", normalize="torchvision")
    config.batch_norm = True
    config.init = "torchvision"
    config.batch_size = 32
    config.eval_batch_size = 120
    config.num_epochs = 3
    config.log_every_steps = 4
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 20
    config.optim.schedule = "step"
    config.optim.step_epochs = 2
    config.checkpoint.every_steps = 100
    config.checkpoint.keep = 1  # one resumable step (~0.9 GB with the momentum) beside model/
    return base_config.get(config, mode)
