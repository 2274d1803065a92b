"""Fine-tuning pretrained weights on a folder of one's own images (docs/transfer.md).

Run:   vgg-flax train --config experiments/configs/finetune.py --workdir runs/finetune \\
           --config.init_from=vgg16 --config.data.folder=photos
`init_from` is anything `vgg_flax.load` reads (a checkpoint folder such as runs/demo/model, a
.pth/.h5/.caffemodel file) or a pretrained name; the architecture and the input preprocessing
come from its usage record (`from_weights`), fc8 starts afresh for the folder's classes
(`init_skip`). The folder holds folder/train/<class>/<images> and folder/val/<class>/<images>,
or only folder/<class>/<images>: then `data.val_fraction` of each class (0.2 unless set) is "val".
`freeze="pool5"` freezes the conv trunk (its BatchNorm statistics too, `bn_stats="frozen"`;
"update" lets them move), "" trains everything; `layer_rates` ("conv*=0.1,fc6=0.5") multiplies
layers' learning rates. Checkpoints, resume and evaluation are the trainer's.
"""

from __future__ import annotations

import ml_collections

from vgg_flax.train import base_config, recipe


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    """The fine-tuning config; mode "local" is a two-step run on the digits (no weights)."""
    config = base_config.paper_config("A")  # arch and widths: replaced by the weights' own
    config.from_weights = True  # architecture and preprocessing from init_from's usage record
    config.init_from = "vgg16"
    config.init_skip = ("fc8",)  # a fresh head for the folder's classes
    config.freeze = "pool5"  # last frozen layer ("" for none; "conv4_3", "fc6", ...)
    config.layer_rates = ""  # "PATTERN=FACTOR,..." learning-rate multipliers of layers
    config.bn_stats = "frozen"  # frozen layers' BatchNorm statistics: "frozen" or "update"
    config.data = base_config.data_fields(
        source="folder",
        folder="",  # folder/{train,val}/<class>/<images>, or folder/<class>/<images>
        val_fraction=None,  # folder/<class>/: the part of each class held out as "val" (0.2)
        split="train",
        eval_split="val",
        flip=True,  # False for images whose mirror is another class (digits, text)
        pca_lighting=0.0,  # the paper's colour shift (0.1) off: small datasets
    )
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_epochs = 10
    config.log_every_steps = 10
    config.optim.learning_rate = recipe.FINETUNE_LEARNING_RATE
    config.optim.schedule = "constant"
    config.checkpoint.every_steps = 500
    if mode == "local":
        config.from_weights = False
        config.freeze = ""
    return base_config.get(config, mode)
