"""Root conftest: import torch and torchvision before anything loads TensorFlow.

Importing torchvision after TensorFlow segfaults on this stack (docs/environment.md).
"""

import torch  # noqa: F401
import torchvision  # noqa: F401
