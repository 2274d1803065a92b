"""XLA compiler options that make vgg-flax's jitted steps leaner on some backends.

Pass them to `jax.jit(fn, compiler_options=compiler_options())`; they are per computation, so
nothing else in the process changes.
"""

from __future__ import annotations

import jax

# XLA:CPU's default scheduler orders work for concurrency, which keeps many large buffers alive
# at once: VGG16's training step at batch 8 needed 3.6 GB of temporaries with it and 1.0 GB
# without, at the same speed on 2 cores (benchmarks/BENCHMARKS.md).
_CPU = {"xla_cpu_enable_concurrency_optimized_scheduler": False}


def compiler_options(backend: str | None = None) -> dict[str, bool]:
    """Options for `jax.jit(..., compiler_options=...)` on `backend` (default: JAX's default)."""
    backend = jax.default_backend() if backend is None else backend
    return dict(_CPU) if backend == "cpu" else {}
