"""TensorFlow beside torch: load triton before TensorFlow, or refuse it later with the fix; and
TensorFlow imported without its start-up notices.

Loading triton (which torch imports when installed, and torchvision, torch.compile, ...) after
TensorFlow kills the process with a segmentation fault; loaded first, both work
(docs/environment.md). `vgg_flax.data`, the only part of vgg-flax that imports TensorFlow, calls
`prepare_for_tensorflow()` before it does, so `import vgg_flax.data; import torchvision` works.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

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


# TensorFlow's start-up notices: INFO lines (oneDNN, CPU features) that its native libraries
# write to stderr before its log level applies, and absl's line announcing them.
_NOTICE = re.compile(
    r"I\d{4} |WARNING: All log messages before absl::InitializeLog|To enable the following "
)


@contextlib.contextmanager
def _keras_unseen() -> Iterator[None]:
    """Keras hidden from TensorFlow's import, unless it is already loaded.

    TensorFlow looks Keras up while importing, to graft `tf.keras` onto itself: with Keras 3
    installed (the keras extra) that imports Keras and, through its wrappers, scikit-learn,
    about half of TensorFlow's import time (4 of 8 s here). vgg-flax uses no `tf.keras`; it
    still loads on first use, and `import keras` works as before.
    """
    if "keras" in sys.modules:
        yield
        return
    sys.modules["keras"] = None  # find_spec answers "not installed" for a None entry
    try:
        yield
    finally:
        if sys.modules.get("keras", 0) is None:
            del sys.modules["keras"]


def import_tensorflow() -> ModuleType:
    """`tensorflow`, imported once (after `prepare_for_tensorflow`) without its start-up notices.

    They would stand before a command's one-line error in every terminal. Any other line
    TensorFlow writes while importing still reaches stderr; TF_CPP_MIN_LOG_LEVEL=0 shows them
    all (the default here is 2: warnings and errors only, later too).
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    prepare_for_tensorflow()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        with _keras_unseen():
            import tensorflow

        return tensorflow
    with tempfile.TemporaryFile() as held, _keras_unseen():
        sys.stderr.flush()
        saved = os.dup(2)  # the native libraries write to the file descriptor, not sys.stderr
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _NOTICE.match(line))
            if kept:
                os.write(2, kept.encode())
    return tensorflow
