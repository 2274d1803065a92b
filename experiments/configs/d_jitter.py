"""Table 3, D at S=[256,512]: ImageNet (ILSVRC-2012) training, the paper's recipe.

Run:   python -m experiments.train --config experiments/configs/d_jitter.py --workdir runs/d_jitter
Smoke: python -m experiments.train --config experiments/configs/d_jitter.py:local --workdir /tmp/s
Aims for the paper's single-scale result (Q=384): top-1 error 25.6%, top-5 error 8.1%.
Fine-tuned from the S=384 model (lr 1e-3: the paper does not say; ours).
"""

from __future__ import annotations

import ml_collections

from vgg_flax.train import base_config, recipe


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The D, S=[256,512] config; mode "local" is a two-step run on the digits."""
    config = base_config.paper_config(
        "D",
        scale_range=recipe.SCALE_JITTER,
        learning_rate=recipe.FINETUNE_LEARNING_RATE,
        init_from="runs/d_384/model",
    )
    return base_config.get(config, mode)
