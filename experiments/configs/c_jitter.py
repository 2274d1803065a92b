"""Table 3, C at S=[256,512]: ImageNet (ILSVRC-2012) training, the paper's recipe.

Run:   python -m experiments.train --config experiments/configs/c_jitter.py --workdir runs/c_jitter
Smoke: python -m experiments.train --config experiments/configs/c_jitter.py:local --workdir /tmp/s
Aims for the paper's single-scale result (Q=384): top-1 error 27.3%, top-5 error 8.8%.
Fine-tuned from the S=384 model (lr 1e-3: the paper does not say; ours).
"""

from __future__ import annotations

import ml_collections

from vgg_flax.train import base_config, recipe


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The C, S=[256,512] config; mode "local" is a two-step run on the digits."""
    config = base_config.paper_config(
        "C",
        scale_range=recipe.SCALE_JITTER,
        learning_rate=recipe.FINETUNE_LEARNING_RATE,
        init_from="runs/c_384/model",
    )
    return base_config.get(config, mode)
