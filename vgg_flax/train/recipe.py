"""The paper's training recipe (section 3.1), in one place: the experiment configs read it.

docs/paper.md states it in full; the numbers here are tested against it.
"""

from __future__ import annotations

# The choices the configs offer (plain names, so the command line's --help imports no JAX).
L2_MASKS = ("kernels", "all")  # what the L2 term covers: see optim.l2_mask
SCHEDULES = ("plateau", "step", "constant")  # the learning-rate schedules: see optim.schedule

BATCH_SIZE = 256
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4  # L2 penalty multiplier
DROPOUT = 0.5  # on fc6 and fc7
LEARNING_RATE = 1e-2
LR_FACTOR = 0.1  # divided by 10 when validation accuracy stops improving...
LR_MAX_DROPS = 3  # ...three times in total
EPOCHS = 74  # 370K iterations at batch 256
FINETUNE_LEARNING_RATE = 1e-3  # S=384 initialised from the S=256 model
SCALE_JITTER = (256, 512)  # multi-scale training: S drawn from [S_min, S_max]
# Deeper nets start from a trained A: these layers are copied (A's name -> the deeper net's name),
# the rest stay random. The paper names "the first four conv layers and the last three FC
# layers"; this is the shape-consistent reading (docs/paper.md).
WARM_START_LAYERS: dict[str, str] = {
    "conv1_1": "conv1_1",
    "conv2_1": "conv2_1",
    "conv3_1": "conv3_1",
    "conv3_2": "conv3_2",
    "fc6": "fc6",
    "fc7": "fc7",
    "fc8": "fc8",
}
# torchvision's reference recipe divides the rate by 10 every 30 epochs (the "step" schedule).
TORCHVISION_STEP_EPOCHS = 30
