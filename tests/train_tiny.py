"""Test helper for the training tests: VGG nets with the paper's layer structure, tiny widths.

Training behaviour (schedules, checkpoints, resume, warm starts) does not depend on the widths,
so the slow full-width nets are only used where the point of a test needs them. The narrow nets
come from the model's public options.
"""

from __future__ import annotations

# Every conv width divided by 8 and a 32-wide head: `create_model(name, **TINY)`.
TINY = {"width": 0.125, "head_width": 32}
