"""Weight files of other frameworks: `pth` (torch's format, read without unpickling),
`torchvision` (its state dicts), `keras` (HDF5) and `caffe` (`.caffemodel`, via `protobuf`).

Readers return vgg-flax variables keyed by the paper's layer names (conv1_1, ..., fc6, fc7, fc8);
`foreign.read` returns a Keras or Caffe file's with its usage record (the architecture read from
the kernels' shapes, Caffe's preprocessing). Readers build no models: that is
`vgg_flax.weights.loading`'s job.
"""

from __future__ import annotations

HEAD_OPTIONS = ("auto", "keep", "drop")


def check_head(head: str) -> None:
    """Raise unless `head` is one of HEAD_OPTIONS."""
    if head not in HEAD_OPTIONS:
        raise ValueError(f"unknown head option {head!r}; choose one of {', '.join(HEAD_OPTIONS)}")
