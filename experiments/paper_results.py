"""The paper's results to reproduce (Tables 3-6): ILSVRC-2012 validation error in percent.

A training scale S is an int (fixed S) or (Smin, Smax) (scale jittering). Test scales Q follow
the paper's section 3.2 (docs/paper.md): a single Q = S, or 384 for jittered S; several
Q = {S-32, S, S+32}, or {256, 384, 512} for jittered S.
"""

from __future__ import annotations

import dataclasses

from vgg_flax.train.recipe import SCALE_JITTER


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """One row of Tables 3-6: nets (several for an ensemble), scales, protocol, errors."""

    table: int
    archs: tuple[str, ...]
    train_scale: int | tuple[int, int]
    test_scales: tuple[int, ...]
    protocol: str  # "dense", "multicrop" or "dense+multicrop"
    top1: float
    top5: float


def single_test_scale(train_scale: int | tuple[int, int]) -> tuple[int]:
    """Table 3's test scale: Q = S for a fixed S, Q = 384 for jittered S."""
    return (384,) if isinstance(train_scale, tuple) else (train_scale,)


def multi_test_scales(train_scale: int | tuple[int, int]) -> tuple[int, int, int]:
    """Table 4's test scales: {S-32, S, S+32} for a fixed S, {256, 384, 512} for jittered S."""
    if isinstance(train_scale, tuple):
        return (256, 384, 512)
    return (train_scale - 32, train_scale, train_scale + 32)


def _paper_rows() -> tuple[PaperResult, ...]:
    jit = SCALE_JITTER
    table3 = [
        ("A", 256, 29.6, 10.4), ("A-LRN", 256, 29.7, 10.5), ("B", 256, 28.7, 9.9),
        ("C", 256, 28.1, 9.4), ("C", 384, 28.1, 9.3), ("C", jit, 27.3, 8.8),
        ("D", 256, 27.0, 8.8), ("D", 384, 26.8, 8.7), ("D", jit, 25.6, 8.1),
        ("E", 256, 27.3, 9.0), ("E", 384, 26.9, 8.7), ("E", jit, 25.5, 8.0),
    ]  # fmt: skip
    table4 = [
        ("B", 256, 28.2, 9.6), ("C", 256, 27.7, 9.2), ("C", 384, 27.8, 9.2),
        ("C", jit, 26.3, 8.2), ("D", 256, 26.6, 8.6), ("D", 384, 26.5, 8.6),
        ("D", jit, 24.8, 7.5), ("E", 256, 26.9, 8.7), ("E", 384, 26.7, 8.6),
        ("E", jit, 24.8, 7.5),
    ]  # fmt: skip
    table5 = [
        ("D", "dense", 24.8, 7.5), ("D", "multicrop", 24.6, 7.5),
        ("D", "dense+multicrop", 24.4, 7.2),
        ("E", "dense", 24.8, 7.5), ("E", "multicrop", 24.6, 7.4),
        ("E", "dense+multicrop", 24.4, 7.1),
    ]  # fmt: skip
    rows = [
        PaperResult(3, (c,), s, single_test_scale(s), "dense", t1, t5) for c, s, t1, t5 in table3
    ]
    rows += [
        PaperResult(4, (c,), s, multi_test_scales(s), "dense", t1, t5) for c, s, t1, t5 in table4
    ]
    rows += [PaperResult(5, (c,), jit, (256, 384, 512), p, t1, t5) for c, p, t1, t5 in table5]
    rows.append(PaperResult(6, ("D", "E"), jit, (256, 384, 512), "dense+multicrop", 23.7, 6.8))
    return tuple(rows)


PAPER_RESULTS: tuple[PaperResult, ...] = _paper_rows()
