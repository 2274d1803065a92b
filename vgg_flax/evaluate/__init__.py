"""Evaluation: the paper's test protocols, padded batches of many image sizes, top-k errors.

The names below load on first use, so that importing one light submodule (for instance
`protocols.PROTOCOLS` for a command line's choices) does not import JAX.
"""

import importlib
from typing import Any

_EXPORTS = {
    "Scorer": "batching",
    "ShapeBatcher": "batching",
    "check_dense_size": "batching",
    "padded_shape": "batching",
    "TopKCounts": "metrics",
    "label_ranks": "metrics",
    "topk_errors": "metrics",
    "PROTOCOLS": "protocols",
    "evaluate": "protocols",
    "evaluate_arrays": "protocols",
    "views": "protocols",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
