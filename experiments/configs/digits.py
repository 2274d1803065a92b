"""The embedded default (`make demo`): VGG-A on scikit-learn's digits, 32x32, on a laptop CPU.

Run:   python -m experiments.train --config experiments/configs/digits.py --workdir runs/demo
Aims for: at least 95% top-1 accuracy on the 360 test digits within 10 minutes on 2 CPU cores.
Full-width VGG-A with BatchNorm (the paper's recipe at this size trains too slowly for the
budget): torchvision's initialisation, a short warm-up, batch 64, four epochs; everything else as
in the paper (SGD momentum 0.9, L2 5e-4, dropout 0.5, plateau drops).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The demo config; mode "local" is a two-step run."""
    config = common.paper_config("A")
    # Unit-scale inputs (torchvision's normalisation) instead of 0-255 minus the mean.
    config.data = ml_collections.ConfigDict({"source": "digits", "normalize": "torchvision"})
    config.batch_norm = True
    config.init = "torchvision"
    config.batch_size = 32
    config.eval_batch_size = 120
    config.num_epochs = 3
    config.eval_every_steps = 15
    config.log_every_steps = 5
    config.optim.learning_rate = 0.01
    config.optim.warmup_steps = 20
    config.optim.patience = 1
    config.checkpoint.every_steps = 100
    return common.get(config, mode)
