"""Top-k error, counted example by example, with masks for filler rows.

Ties are broken deterministically by class index: among classes with equal scores, the lower
index ranks first. So the true class is in the top k exactly when fewer than k classes score
strictly higher than it, or equally with a lower index (what a stable descending sort gives).
`label_ranks` is that one rule, for NumPy arrays on the host and for JAX arrays inside the jitted
training-time evaluation alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def label_ranks(scores: np.ndarray | jax.Array, labels: np.ndarray | jax.Array) -> Any:
    """0-based rank of each row's true class under the tie rule above: (N, C), (N,) -> (N,).

    JAX arrays (also traced ones) give a JAX array; anything else is checked (`check_scores`)
    and computed in NumPy.
    """
    if isinstance(scores, jax.Array) or isinstance(labels, jax.Array):
        xp = jnp
    else:
        xp, scores, labels = np, np.asarray(scores), np.asarray(labels)
        check_scores(scores, labels)
    own = xp.take_along_axis(scores, labels[:, None], axis=1)
    before = xp.arange(scores.shape[1])[None, :] < labels[:, None]
    return xp.sum((scores > own) | ((scores == own) & before), axis=1)


def check_scores(scores: np.ndarray, labels: np.ndarray) -> None:
    """Refuse host scores and labels whose ranks are undefined (shapes, range, NaN)."""
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"expected scores (N, classes) and labels (N,), got {scores.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1]}), got {labels.min()}..{labels.max()}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; a rank is undefined (check the model's input)")


@dataclass(frozen=True)
class TopKCounts:
    """Running counts: examples seen and, per k, examples whose label ranks in the top k."""

    ks: tuple[int, ...] = (1, 5)
    total: int = 0
    correct: tuple[int, ...] = field(default=())

    def add(
        self, scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
    ) -> TopKCounts:
        """Counts with one more batch; `mask` (N,) bool marks real rows (False: filler)."""
        ranks = label_ranks(np.asarray(scores), np.asarray(labels))
        keep = np.ones(len(ranks), bool) if mask is None else np.asarray(mask, bool)
        if keep.shape != ranks.shape:
            raise ValueError(f"mask shape {keep.shape} does not match {len(ranks)} rows")
        old = self.correct or (0,) * len(self.ks)
        new = tuple(c + int(np.sum((ranks < k) & keep)) for c, k in zip(old, self.ks, strict=True))
        return TopKCounts(self.ks, self.total + int(keep.sum()), new)

    def errors(self) -> dict[str, float]:
        """Top-k error in percent per k, e.g. {"top1": 29.6, "top5": 10.4}."""
        if self.total == 0:
            raise ValueError("no examples were counted; the error is undefined")
        correct = self.correct or (0,) * len(self.ks)
        pairs = zip(self.ks, correct, strict=True)
        return {f"top{k}": 100.0 * (1 - c / self.total) for k, c in pairs}


def topk_errors(
    scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k errors in percent of one array of scores (N, C) against labels (N,)."""
    return TopKCounts(tuple(ks)).add(scores, labels).errors()
