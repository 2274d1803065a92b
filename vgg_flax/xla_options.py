"""XLA compiler options that make vgg-flax's jitted steps leaner on some backends.

Pass them to `jax.jit(fn, compiler_options=compiler_options())`; they are per computation, so
nothing else in the process changes.
"""

from __future__ import annotations

import jax

# XLA:CPU's default scheduler (JAX 0.10) orders work for concurrency and keeps many large buffers
# alive at once: VGG16's training step at batch 8 peaked at 5.3 GB with it and 2.7 GB with the
# memory-optimised one, at the same speed on 2 cores (benchmarks/BENCHMARKS.md).
_CPU = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """Options for `jax.jit(..., compiler_options=...)` on `backend` (default: JAX's default)."""
    backend = jax.default_backend() if backend is None else backend
    return dict(_CPU) if backend == "cpu" else {}
