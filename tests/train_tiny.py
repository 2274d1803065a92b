"""Test helper for the training tests: VGG nets with the paper's layer structure, tiny widths.

Training behaviour (schedules, checkpoints, resume, warm starts) does not depend on the widths,
so the slow full-width nets are only used where the point of a test needs them.
"""

from __future__ import annotations

from vgg_flax import configs

# Table 1's structure with every width divided by 8 (16 for the 512s), and a 32-wide head.
TINY_CONFIGS = {
    name: tuple(
        {64: 8, 128: 16, 256: 32, 512: 32, "1x1-256": "1x1-32", "1x1-512": "1x1-32"}.get(e, e)
        for e in layers
    )
    for name, layers in configs.CONFIGS.items()
}
TINY_HEAD_WIDTH = 32


def clear_compiled() -> None:
    """Forget compiled init/train/eval programs, which are cached per model and so per width."""
    from vgg_flax.train import init, step

    init._jitted_init.cache_clear()
    step.make_train_step.cache_clear()
    step.make_eval_step.cache_clear()


def shrink(monkeypatch) -> None:
    """Make every VGG config tiny for the rest of a test (pytest's monkeypatch fixture).

    Full-width tests that follow must call `clear_compiled()` first.
    """
    clear_compiled()
    for name, layers in TINY_CONFIGS.items():
        monkeypatch.setitem(configs.CONFIGS, name, layers)
    monkeypatch.setattr(configs, "HEAD_WIDTH", TINY_HEAD_WIDTH)


def shrink_globally() -> None:
    """The same, for a subprocess that never restores it."""
    configs.CONFIGS.update(TINY_CONFIGS)
    configs.HEAD_WIDTH = TINY_HEAD_WIDTH
