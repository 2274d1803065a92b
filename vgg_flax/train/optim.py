"""The optimiser of section 3.1, built once from optax's pieces: SGD with momentum, the L2 term,
the learning-rate schedules and the plateau rule.

`make_optimizer` chains PyTorch-style heavy-ball momentum (`optax.trace`), the scheduled rate
(`optax.inject_hyperparams`, so the state records the rate of every step) and the plateau rule's
scale. The plateau rule moves only when the trainer records an evaluation (`record_evaluation`);
its state counts the drops. `optax.contrib.reduce_on_plateau` is not used: it moves its state on
every update with that update's value, and keeps only the resulting scale, not the drops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vgg_flax.train import recipe

L2_MASKS = recipe.L2_MASKS
SCHEDULES = recipe.SCHEDULES


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
    # At least float32 (bf16 would lose the sum); float64 parameters keep float64 (parity runs).
    leaves = [
        jnp.sum(jnp.square(w.astype(jnp.promote_types(w.dtype, jnp.float32))))
        for w, keep in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
        if keep
    ]
    return 0.5 * weight_decay * sum(leaves, jnp.float32(0.0))


class PlateauState(NamedTuple):
    """The plateau rule: best validation accuracy, evaluations since it, drops, current scale."""

    best: jax.Array
    since_best: jax.Array
    drops: jax.Array
    scale: jax.Array


def plateau_scale() -> optax.GradientTransformation:
    """Scale updates by the plateau state's `scale`; the state moves in `record_evaluation`."""

    def init(params: Any) -> PlateauState:
        del params
        return PlateauState(
            best=jnp.array(-jnp.inf, jnp.float32),
            since_best=jnp.zeros((), jnp.int32),
            drops=jnp.zeros((), jnp.int32),
            scale=jnp.ones((), _rate_dtype()),
        )

    def update(updates: Any, state: PlateauState, params: Any = None) -> tuple[Any, PlateauState]:
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def step_drops(step: Any, step_every: int) -> Any:
    """How many times the "step" schedule has divided the rate by step `step` (0-based)."""
    return step // step_every


def schedule(
    name: str,
    *,
    base: float,
    factor: float = recipe.LR_FACTOR,
    step_every: int = 0,
    warmup_steps: int = 0,
) -> optax.Schedule:
    """The scheduled rate as a function of the step (0-based); the plateau scale comes on top.

    plateau and constant: base; step: base * factor ** (step // step_every) (torchvision's
    StepLR, `step_every` in steps). A linear warm-up from base / warmup_steps to the scheduled
    rate covers the first `warmup_steps` steps of any schedule.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if name == "step" and step_every < 1:
        raise ValueError(f"the step schedule needs step_every >= 1 steps, got {step_every}")

    def rate(count: jax.Array) -> jax.Array:
        dtype = _rate_dtype()
        value = jnp.asarray(base, dtype)
        if name == "step":
            value = value * jnp.asarray(factor, dtype) ** step_drops(count, step_every)
        if warmup_steps:
            value = value * jnp.minimum(1.0, (count + 1) / warmup_steps).astype(dtype)
        return value

    return rate


def scale_by_layer(rates: Mapping[str, float]) -> optax.GradientTransformation:
    """Multiply each top-level layer's updates by `rates[layer]` (missing: 1); 0 freezes it.

    A frozen layer's update is exactly zero and never reads its gradient, so XLA drops the
    backward pass into a frozen trunk and the layer's parameters stay bit-identical.
    """

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        unknown = set(rates) - set(updates)
        if unknown:
            raise ValueError(f"learning rates given for unknown layers {sorted(unknown)}")

        def scaled(path: tuple, u: jax.Array) -> jax.Array:
            factor = rates.get(_layer_name(path), 1.0)
            if factor == 0:
                return jnp.zeros_like(u)
            return u if factor == 1 else u * jnp.asarray(factor, u.dtype)

        return jax.tree_util.tree_map_with_path(scaled, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    rate: optax.Schedule,
    *,
    momentum: float = recipe.MOMENTUM,
    layer_rates: Mapping[str, float] | None = None,
) -> optax.GradientTransformation:
    """SGD as in PyTorch (v <- m v + g; w <- w - lr v) at `rate(step)` times the plateau scale.

    `layer_rates` (layer name -> multiplier, `vgg_flax.transfer.freezing.layer_rates`) scales
    each layer's rate; layers at 0 are frozen and keep no momentum.
    """
    trace = optax.trace(decay=momentum)
    if layer_rates:
        trained = {name for name, factor in layer_rates.items() if factor != 0}
        trace = optax.masked(
            trace,
            lambda params: jax.tree_util.tree_map_with_path(
                lambda path, _: (
                    _layer_name(path) not in layer_rates or _layer_name(path) in trained
                ),
                params,
            ),
        )
    return optax.chain(
        trace,
        optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=rate),
        plateau_scale(),
        *([scale_by_layer(dict(layer_rates))] if layer_rates else []),
    )


# Positions in `make_optimizer`'s chain state.
_RATE, _PLATEAU = 1, 2


def plateau(opt_state: tuple) -> PlateauState:
    """The plateau rule's state inside `make_optimizer`'s state."""
    return opt_state[_PLATEAU]


def learning_rate(opt_state: tuple) -> jax.Array:
    """The learning rate of the last update (the scheduled rate times the plateau scale)."""
    return opt_state[_RATE].hyperparams["learning_rate"] * plateau(opt_state).scale


def record_evaluation(
    opt_state: tuple,
    accuracy: Any,
    *,
    patience: int,
    factor: float = recipe.LR_FACTOR,
    max_drops: int = recipe.LR_MAX_DROPS,
    min_delta: float = 0.0,
) -> tuple:
    """Feed one validation accuracy to the plateau rule; returns the new optimiser state.

    An accuracy counts as a gain when it beats the best so far by more than `min_delta`; once
    `patience` evaluations in a row bring no gain, the rate is multiplied by `factor` and the
    count starts again; no drop happens beyond `max_drops`.
    """
    if patience < 1:
        raise ValueError(f"patience must be at least 1 evaluation, got {patience}")
    old = plateau(opt_state)
    accuracy = jnp.asarray(accuracy, jnp.float32)
    gain = accuracy > old.best + min_delta
    since = jnp.where(gain, 0, old.since_best + 1)
    drop = ~gain & (since >= patience) & (old.drops < max_drops)
    new = PlateauState(
        best=jnp.where(gain, accuracy, old.best),
        since_best=jnp.where(drop, 0, since).astype(jnp.int32),
        drops=(old.drops + drop).astype(jnp.int32),
        scale=jnp.where(drop, old.scale * jnp.asarray(factor, old.scale.dtype), old.scale),
    )
    return (*opt_state[:_PLATEAU], new, *opt_state[_PLATEAU + 1 :])


def _rate_dtype() -> jnp.dtype:
    # float32, or float64 under jax.enable_x64: a float64 parity run then schedules exactly.
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _layer_name(path: tuple) -> str:
    first = path[0]
    return str(getattr(first, "key", getattr(first, "name", first)))


def _leaf_name(path: tuple) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))
