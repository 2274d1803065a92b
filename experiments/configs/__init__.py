"""One ml_collections config per row of the paper's Table 3, plus `digits.py` (the demo).

Each file's name is also its name for `--config` from any folder (`vgg-flax train --config
a_256`); their shared base is `vgg_flax.train.base_config`.
"""
