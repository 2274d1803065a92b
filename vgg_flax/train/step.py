"""The jitted training and evaluation steps, data-parallel over a one-axis device mesh.

Parameters and optimiser state are replicated, the batch is split over the mesh axis "data",
and `jax.jit` with these shardings inserts the gradient all-reduce itself, so one step on N
devices computes the same update as on one device (no `jax.pmap`). The state is a plain dict:
{"step", "params", "batch_stats", "opt_state", "rng"} with the base dropout key stored as raw
uint32 key data (Orbax saves it like any array).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vgg_flax.evaluate.metrics import label_ranks
from vgg_flax.parallel import batch_sharding, replicated
from vgg_flax.train import optim
from vgg_flax.xla_options import compiler_options

State = dict[str, Any]


def create_state(
    variables: dict[str, Any], key: jax.Array, mesh: Mesh, tx: optax.GradientTransformation
) -> State:
    """The initial training state for optimiser `tx`, every leaf replicated over `mesh`."""

    def build(variables: dict[str, Any], key: jax.Array) -> State:
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": tx.init(variables["params"]),
            "rng": jax.random.key_data(key),
        }

    return jax.jit(build, out_shardings=replicated(mesh))(variables, key)


def model_variables(state: State) -> dict[str, Any]:
    """The Flax variables of a training state (what `model.apply` and checkpoints take)."""
    variables = {"params": state["params"]}
    if state["batch_stats"]:
        variables["batch_stats"] = state["batch_stats"]
    return variables


@functools.cache  # runs of the same net (e.g. several configs in one process) share the compile
def make_train_step(
    model: Any,
    mesh: Mesh,
    tx: optax.GradientTransformation,
    *,
    weight_decay: float,
    l2_mask: str,
    frozen_bn: tuple[str, ...] = (),
) -> Callable[[State, dict[str, jax.Array]], tuple[State, dict[str, jax.Array]]]:
    """`step(state, batch) -> (state, metrics)`, jitted; donates `state`.

    Optimiser `tx` (`optim.make_optimizer`); loss: mean cross-entropy over the global batch plus
    the L2 term on the parameters `optim.l2_mask(params, l2_mask)` selects.
    Dropout draws from fold_in(base key, step), so a resumed run draws the same masks, unless
    the batch holds "dropout_masks" ({"fc6": keep, "fc7": keep}, as `VGG.__call__` takes
    them): parity runs give both frameworks the same masks that way. The BatchNorm layers named
    in `frozen_bn` (a frozen trunk's) normalise with their running statistics and keep them, as
    in evaluation, while the rest of the net trains. The
    metric "params_finite" says whether every updated parameter is finite; "learning_rate" is
    the rate this step used.
    """

    def train_step(state: State, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def loss_fn(params: Any):
            variables = model_variables({**state, "params": params})
            logits, updates = _apply_frozen_bn(frozen_bn, model.apply)(
                variables,
                batch["image"],
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
                # Parity runs supply dropout's keep masks (PyTorch's too) instead of drawing them.
                **({"dropout_masks": batch["dropout_masks"]} if "dropout_masks" in batch else {}),
            )
            # At least float32; float64 logits stay float64 (float64 parity runs).
            logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            l2 = optim.l2_penalty(params, optim.l2_mask(params, l2_mask), weight_decay)
            return ce + l2, (ce, l2, logits, updates.get("batch_stats", {}))

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (ce, l2, logits, batch_stats)), grads = grad_fn(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {
            "step": state["step"] + 1,
            "params": params,
            "batch_stats": batch_stats,
            "opt_state": opt_state,
            "rng": state["rng"],
        }
        metrics = {
            "loss": loss,
            "cross_entropy": ce,
            "l2": l2,
            "accuracy": jnp.mean(label_ranks(logits, batch["label"]) == 0),
            "learning_rate": optim.learning_rate(opt_state),
            # The loss only sees the old parameters: check the new ones before they are saved.
            "params_finite": jnp.all(
                jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])
            ),
        }
        return new_state, metrics

    rep = replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=(rep, rep),
        donate_argnums=0,
        compiler_options=compiler_options(),
    )


def _apply_frozen_bn(frozen_bn: tuple[str, ...], apply: Callable) -> Callable:
    """`apply` with the BatchNorm layers named in `frozen_bn` run in evaluation mode."""
    if not frozen_bn:
        return apply
    import flax.linen as nn

    from vgg_flax.models.layers import BatchNorm

    def interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        module = context.module
        if isinstance(module, BatchNorm) and module.name in frozen_bn:
            return next_fun(args[0], False)  # running statistics, not updated
        return next_fun(*args, **kwargs)

    def frozen(*args: Any, **kwargs: Any) -> Any:
        with nn.intercept_methods(interceptor):
            return apply(*args, **kwargs)

    return frozen


@functools.cache
def make_eval_step(
    model: Any, mesh: Mesh
) -> Callable[[State, dict[str, jax.Array]], dict[str, jax.Array]]:
    """`eval_step(state, batch) -> sums` of top-1/top-5 hits, loss and count where "mask" is set."""

    def eval_step(state: State, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        logits = model.apply(model_variables(state), batch["image"], train=False)
        logits = logits.astype(jnp.float32)
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["label"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        ranks = label_ranks(logits, labels)
        return {
            "correct": jnp.sum((ranks < 1) * mask),
            "correct_top5": jnp.sum((ranks < 5) * mask),
            "loss": jnp.sum(ce * mask),
            "count": jnp.sum(mask),
        }

    rep = replicated(mesh)
    return jax.jit(
        eval_step,
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=rep,
        compiler_options=compiler_options(),
    )
