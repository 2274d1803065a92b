"""Table 3, E at S=256: ImageNet (ILSVRC-2012) training, the paper's recipe.

Run:   python -m experiments.train --config experiments/configs/e_256.py --workdir runs/e_256
Smoke: python -m experiments.train --config experiments/configs/e_256.py:local --workdir /tmp/s
Aims for the paper's single-scale result (Q=256): top-1 error 27.3%, top-5 error 9.0%.
Warm start from a trained A (configs.WARM_START_LAYERS).
"""

from __future__ import annotations

import ml_collections

from vgg_flax.train import base_config


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The E, S=256 config; mode "local" is a two-step run on the digits."""
    return base_config.get(base_config.paper_config("E", init_from="runs/a_256/model"), mode)
