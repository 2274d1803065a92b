"""Subprocess entry for the multi-device parity test: `vgg-flax ...` with the arguments given.

The test sets XLA_FLAGS=--xla_force_host_platform_device_count=N in this process's environment,
which JAX reads once, when it first starts: hence a process of its own.
"""

import sys

import torch  # noqa: F401  (before anything that might load TensorFlow)

from vgg_flax.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
