"""Table 3, B at S=256: ImageNet (ILSVRC-2012) training, the paper's recipe.

Run:   python -m experiments.train --config experiments/configs/b_256.py --workdir runs/b_256
Smoke: python -m experiments.train --config experiments/configs/b_256.py:local --workdir /tmp/s
Aims for the paper's single-scale result (Q=256): top-1 error 28.7%, top-5 error 9.9%.
Warm start from a trained A (configs.WARM_START_LAYERS).
"""

from __future__ import annotations

import ml_collections

from vgg_flax.train import base_config


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The B, S=256 config; mode "local" is a two-step run on the digits."""
    return base_config.get(base_config.paper_config("B", init_from="runs/a_256/model"), mode)
