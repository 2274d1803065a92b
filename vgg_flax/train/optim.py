"""The optimiser of section 3.1: SGD with momentum, an L2 term, and the learning-rate schedules.

Everything here is a pure function of plain values, so the schedule state can be saved as JSON
and each rule tested exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vgg_flax import configs

L2_MASKS = ("kernels", "all")
SCHEDULES = ("plateau", "step", "constant")


def sgd(momentum: float = configs.TRAIN_MOMENTUM) -> optax.GradientTransformation:
    """Heavy-ball momentum as in PyTorch's SGD: v <- m v + g. The step scales v by -lr itself."""
    return optax.trace(decay=momentum)


def l2_mask(params: Any, which: str = "kernels") -> Any:
    """Which parameters the L2 term covers: a pytree of bools shaped like `params`.

    "kernels": conv and fc kernels only (biases and BatchNorm scale/shift are exempt, as in
    Caffe's reference nets, where biases have decay_mult 0); "all": every parameter (PyTorch's
    `weight_decay` argument).
    """
    if which not in L2_MASKS:
        raise ValueError(f"unknown l2 mask {which!r}; choose one of {', '.join(L2_MASKS)}")
    if which == "all":
        return jax.tree.map(lambda _: True, params)
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) == "kernel", params)


def l2_penalty(params: Any, mask: Any, weight_decay: float) -> jax.Array:
    """weight_decay / 2 * sum of squares of the masked parameters (gradient: weight_decay * w)."""
    leaves = [
        jnp.sum(jnp.square(w.astype(jnp.float32)))
        for w, keep in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
        if keep
    ]
    return 0.5 * weight_decay * sum(leaves, jnp.float32(0.0))


@dataclasses.dataclass(frozen=True)
class Plateau:
    """State of the plateau rule: best validation accuracy, evaluations since it, drops so far."""

    best: float = -math.inf
    since_best: int = 0
    drops: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (the best accuracy as a string when it is -inf)."""
        return {"best": repr(self.best), "since_best": self.since_best, "drops": self.drops}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plateau:
        """Inverse of `to_json`."""
        return cls(float(data["best"]), int(data["since_best"]), int(data["drops"]))


def plateau_update(
    state: Plateau,
    accuracy: float,
    *,
    patience: int,
    max_drops: int = configs.TRAIN_LR_MAX_DROPS,
    min_delta: float = 0.0,
) -> Plateau:
    """Feed one validation accuracy; drop once `patience` evaluations in a row bring no gain.

    An accuracy counts as a gain when it beats the best so far by more than `min_delta`. After a
    drop the count starts again; no drop happens beyond `max_drops`.
    """
    if patience < 1:
        raise ValueError(f"patience must be at least 1 evaluation, got {patience}")
    if accuracy > state.best + min_delta:
        return Plateau(best=accuracy, since_best=0, drops=state.drops)
    since = state.since_best + 1
    if since >= patience and state.drops < max_drops:
        return Plateau(best=state.best, since_best=0, drops=state.drops + 1)
    return Plateau(best=state.best, since_best=since, drops=state.drops)


def learning_rate(
    step: int,
    *,
    schedule: str,
    base: float,
    factor: float = configs.TRAIN_LR_FACTOR,
    plateau: Plateau | None = None,
    step_every: int = 0,
    warmup_steps: int = 0,
) -> float:
    """The learning rate for training step `step` (0-based).

    plateau: base * factor ** drops; step: base * factor ** (step // step_every) (torchvision's
    StepLR, `step_every` in steps); constant: base. A linear warm-up from base / warmup_steps to
    the scheduled rate covers the first `warmup_steps` steps of any schedule.
    """
    if schedule == "plateau":
        rate = base * factor ** (plateau or Plateau()).drops
    elif schedule == "step":
        if step_every < 1:
            raise ValueError(f"the step schedule needs step_every >= 1 steps, got {step_every}")
        rate = base * factor ** (step // step_every)
    elif schedule == "constant":
        rate = base
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        rate *= (step + 1) / warmup_steps
    return rate


def _leaf_name(path: tuple) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))
