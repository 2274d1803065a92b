"""The shared base of every experiment config: the paper's recipe (section 3.1) as defaults.

Each config of experiments/configs/ (one per row of Table 3, and the digits demo) calls
`paper_config(...)` with what its row changes; `local(config)` turns any of them into a
seconds-long smoke run on the embedded digits (tiny batch, two steps). `data_fields` is the one
definition of `config.data`: every option of the input pipeline is a field of every config, so
any of them (`folder`, `data_dir`, `manual_dir`, `crop_size`, ...) can be overridden on the
command line (`--config.data.source=folder --config.data.folder=DIR`). It lives in the package,
not beside the configs, so that a config file loads by its path from any folder (ml_collections
loads it as a lone module: it can only import installed packages).
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from vgg_flax import preprocessing
from vgg_flax.train import recipe


def paper_config(
    arch: str,
    *,
    scale: int = preprocessing.TRAIN_SCALE,
    scale_range: tuple[int, int] | None = None,
    learning_rate: float = recipe.LEARNING_RATE,
    init_from: str = "",
) -> ml_collections.ConfigDict:
    """A config that trains VGG `arch` on ImageNet at training scale S=`scale` (or jittered)."""
    config = ml_collections.ConfigDict()
    config.arch = arch  # Table 1's name, or a layer list (see vgg_flax.models.arch)
    config.batch_norm = False
    config.width = 1.0  # conv channel multiplier (e.g. 0.125 for a narrow net)
    config.head_width = 4096  # outputs of fc6 and fc7
    config.pooling = "max"  # or "avg"
    config.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 parameters
    config.dropout = recipe.DROPOUT
    config.init = "paper"  # "paper" N(0, init_std), "glorot", "torchvision"
    config.init_std = 0.01
    config.init_from = init_from  # a vgg-flax checkpoint directory (e.g. a run's model/)
    config.init_skip = ()  # target layers not to copy (e.g. ("fc8",) for other classes)
    config.seed = 0

    config.batch_size = recipe.BATCH_SIZE  # global, whatever the number of devices
    config.eval_batch_size = recipe.BATCH_SIZE
    config.eval_batches = 0  # 0: the whole evaluation split
    config.num_epochs = recipe.EPOCHS
    config.total_steps = 0  # 0: num_epochs of the training split
    config.eval_every_steps = 0  # 0: once per epoch
    config.log_every_steps = 50

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = learning_rate
    config.optim.momentum = recipe.MOMENTUM
    config.optim.weight_decay = recipe.WEIGHT_DECAY
    config.optim.l2_mask = "kernels"  # "kernels" (weights only) or "all"
    config.optim.schedule = "plateau"  # "plateau", "step" (torchvision's) or "constant"
    config.optim.patience = 2  # evaluations without a better val accuracy before a drop
    config.optim.min_delta = 0.0
    config.optim.factor = recipe.LR_FACTOR
    config.optim.max_drops = recipe.LR_MAX_DROPS
    config.optim.step_epochs = recipe.TORCHVISION_STEP_EPOCHS  # "step" schedule only
    config.optim.warmup_steps = 0

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 2
    # False: step checkpoints without SGD's momentum buffers (a third smaller); a resumed run
    # restarts momentum from zero, and says so. The final model/ never holds optimiser state.
    config.checkpoint.optimizer_state = True

    config.data = data_fields(source="imagenet2012", scale=scale, scale_range=scale_range)
    return config


def data_fields(**fields: Any) -> ml_collections.ConfigDict:
    """`config.data`: every option of `vgg_flax.data.default_config`, `fields` set, the rest unset.

    An unset field is None, which `default_config` reads as the source's default; it takes any
    value from the command line (`--config.data.folder=DIR`, `--config.data.crop_size=64`,
    `--config.data.scale_range='(256, 512)'`). An unknown name in `fields` raises ValueError.
    """
    from vgg_flax.data.config import default_config  # light: no TensorFlow

    known = list(default_config(source=fields.get("source", "digits")))
    unknown = set(fields) - set(known)
    if unknown:
        raise ValueError(f"unknown data options {sorted(unknown)}; known: {sorted(known)}")
    data = ml_collections.ConfigDict()
    for name in known:
        value = fields.get(name)
        data[name] = config_dict.placeholder(object) if value is None else value
    return data


def local(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` shrunk to a smoke run: digits at 32x32, batch 2, two steps, one eval batch."""
    config.data = data_fields(source="digits")
    config.init_from = ""  # local runs have no trained A to start from
    config.batch_size = 2
    config.eval_batch_size = 2
    config.eval_batches = 1
    config.total_steps = 2
    config.log_every_steps = 1
    config.checkpoint.every_steps = 2
    config.checkpoint.keep = 1
    return config


def get(config: ml_collections.ConfigDict, mode: str | None) -> ml_collections.ConfigDict:
    """The full config, or its local mode when `mode` is "local" (`--config path.py:local`)."""
    if mode in (None, "", "full"):
        return config
    if mode == "local":
        return local(config)
    raise ValueError(f"unknown config mode {mode!r}; use 'local' or nothing")
