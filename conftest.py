"""Root conftest: import torch and torchvision before anything loads TensorFlow; big tests first.

Importing torchvision after TensorFlow segfaults on this stack (docs/environment.md).
"""

import pytest
import torch  # noqa: F401
import torchvision  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run tests marked `big_memory` first, while the test process itself is still small.

    The float64 parity runs of full-width nets peak at 8-13 GB each; after the rest of the suite
    this process holds several GB more, too much beside them on a 24 GB machine.
    """
    items.sort(key=lambda item: item.get_closest_marker("big_memory") is None)
