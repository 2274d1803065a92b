"""The three weight initialisations: the paper's, Glorot's, and torchvision's."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

INITS = ("paper", "glorot", "torchvision")
# fc6..fc8 are stored as convolutions; give them a Linear layer's fans (in = kh*kw*cin, out = cout).
_LINEAR_AXES = {"in_axis": (0, 1, 2), "out_axis": -1}


def kernel_init(kind: str, *, head: bool, std: float = 0.01) -> Callable:
    """Kernel initialiser of `kind` for a conv-trunk layer (head=False) or fc6..fc8 (head=True).

    paper: N(0, std) everywhere (the paper's "variance 1e-2", read as Caffe's std 0.01 by default).
    glorot: Glorot/Xavier uniform, with a Linear layer's fans for the head.
    torchvision: Kaiming-normal fan_out (ReLU gain) for convs, N(0, 0.01) for the head.
    """
    if kind == "paper":
        return nn.initializers.normal(std)
    if kind == "glorot":
        axes = _LINEAR_AXES if head else {}
        return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", **axes)
    if kind == "torchvision":
        if head:
            return nn.initializers.normal(0.01)
        return nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    raise ValueError(f"unknown init {kind!r}; choose one of {', '.join(INITS)}")
