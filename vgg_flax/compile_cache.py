"""JAX's persistent compilation cache for vgg-flax's commands: a second run skips compiling.

Compiling VGG's training step takes longer than a step itself on a CPU; with the cache on, a
process that jits the same computation as an earlier one (the same config, shapes and jax
version) reads the executable from disk instead. The trainer, `experiments.evaluate`,
`vgg-flax predict` and the benchmarks call `enable()`; a library user opts in the same way.

Where: `$VGG_FLAX_COMPILE_CACHE`, else `~/.cache/vgg_flax/compile` (beside the weights cache);
`VGG_FLAX_COMPILE_CACHE=off` (or `0`, `none`) turns it off. A cache directory set by other means
(`JAX_COMPILATION_CACHE_DIR`, `jax.config.update("jax_compilation_cache_dir", ...)`) is kept.
"""

from __future__ import annotations

import os

ENV = "VGG_FLAX_COMPILE_CACHE"
OFF = ("off", "0", "none", "false", "no")
# Every computation is cached (JAX's default skips those compiling in under 1 s,
# which leaves out the small jitted helpers around each training step: they add up).
MIN_COMPILE_S = 0.0


def default_dir() -> str:
    """The cache folder when nothing says otherwise: ~/.cache/vgg_flax/compile."""
    return os.path.join(os.path.expanduser("~"), ".cache", "vgg_flax", "compile")


def enable(directory: str | os.PathLike | None = None) -> str | None:
    """Turn JAX's persistent compilation cache on; returns its folder, or None when it is off.

    `directory` overrides `$VGG_FLAX_COMPILE_CACHE` and the default; a folder already configured
    in JAX (by its own option or environment variable) wins over both, so tests and users who set
    one keep it.
    """
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    chosen = os.fspath(directory) if directory is not None else os.environ.get(ENV, default_dir())
    if chosen.strip().lower() in OFF:
        return None
    os.makedirs(chosen, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", chosen)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    return chosen
