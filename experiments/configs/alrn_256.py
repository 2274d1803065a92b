"""Table 3, A-LRN at S=256: ImageNet (ILSVRC-2012) training, the paper's recipe.

Run:   python -m experiments.train --config experiments/configs/alrn_256.py --workdir runs/alrn_256
Smoke: python -m experiments.train --config experiments/configs/alrn_256.py:local --workdir /tmp/s
Aims for the paper's single-scale result (Q=256): top-1 error 29.7%, top-5 error 10.5%.
From random init; LRN after conv1_1.
"""

from __future__ import annotations

import ml_collections

from vgg_flax.train import base_config


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The A-LRN, S=256 config; mode "local" is a two-step run on the digits."""
    return base_config.get(base_config.paper_config("A-LRN"), mode)
