"""TensorFlow beside torch: load triton before TensorFlow, or refuse it later with the fix.

Loading triton (which torch imports when installed, and torchvision, torch.compile, ...) after
TensorFlow kills the process with a segmentation fault; loaded first, both work
(docs/environment.md). `vgg_flax.data`, the only part of vgg-flax that imports TensorFlow, calls
`prepare_for_tensorflow()` before it does, so `import vgg_flax.data; import torchvision` works.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

FIX = (
    "import torch and torchvision before TensorFlow (before tensorflow, tensorflow_datasets or "
    "vgg_flax.data) in this process"
)


class _RefuseTriton(importlib.abc.MetaPathFinder):
    """Turns a late `import triton` (a segfault after TensorFlow) into an ImportError."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "triton" or name.startswith("triton."):
            raise ImportError(
                f"triton (imported by torch/torchvision) crashes the process when it is loaded "
                f"after TensorFlow, which is already imported: {FIX}"
            )
        return None


def prepare_for_tensorflow() -> None:
    """Make a later torch/torchvision import safe before TensorFlow is imported.

    Imports triton now when it is installed (0.2 s). When TensorFlow is already loaded, too late
    for that, a later triton import raises an ImportError naming the fix instead of crashing.
    """
    if "triton" in sys.modules or any(isinstance(f, _RefuseTriton) for f in sys.meta_path):
        return
    try:
        installed = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        return
    if "tensorflow" not in sys.modules:
        try:
            import triton  # noqa: F401  (its native libraries must load before TensorFlow's)

            return
        except Exception:  # a broken triton: refuse it below rather than crash later
            pass
    sys.meta_path.insert(0, _RefuseTriton())
