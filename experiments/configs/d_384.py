"""Table 3, D at S=384: ImageNet (ILSVRC-2012) training, the paper's recipe.

Run:   python -m experiments.train --config experiments/configs/d_384.py --workdir runs/d_384
Smoke: python -m experiments.train --config experiments/configs/d_384.py:local --workdir /tmp/s
Aims for the paper's single-scale result (Q=384): top-1 error 26.8%, top-5 error 8.7%.
Initialised from the S=256 model, lr 1e-3.
"""

from __future__ import annotations

import ml_collections

from vgg_flax.train import base_config, recipe


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The D, S=384 config; mode "local" is a two-step run on the digits."""
    config = base_config.paper_config(
        "D",
        scale=384,
        learning_rate=recipe.FINETUNE_LEARNING_RATE,
        init_from="runs/d_256/model",
    )
    return base_config.get(config, mode)
