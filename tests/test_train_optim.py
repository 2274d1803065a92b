"""The optimiser rules of section 3.1: plateau drops, step schedule, warm-up, the L2 term."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_flax.train import optim


def run_plateau(accuracies, **kwargs):
    state, drops = optim.Plateau(), []
    for accuracy in accuracies:
        state = optim.plateau_update(state, accuracy, **kwargs)
        drops.append(state.drops)
    return state, drops


def test_plateau_drops_exactly_after_patience_evaluations_without_gain():
    # Improves for 3 evaluations, then stalls: with patience 2 the drop comes at the 2nd stall.
    _, drops = run_plateau([0.1, 0.2, 0.3, 0.3, 0.25], patience=2)
    assert drops == [0, 0, 0, 0, 1]
    _, drops = run_plateau([0.1, 0.2, 0.3, 0.3, 0.25, 0.29], patience=3)
    assert drops == [0, 0, 0, 0, 0, 1]


def test_plateau_gain_resets_the_count_and_drops_restart_counting():
    # stall, gain (reset), stall, stall -> drop; then two more stalls -> second drop.
    _, drops = run_plateau([0.5, 0.4, 0.6, 0.6, 0.59, 0.1, 0.2], patience=2)
    assert drops == [0, 0, 0, 0, 1, 1, 2]


def test_plateau_never_drops_more_than_max_drops():
    state, drops = run_plateau([0.5] + [0.0] * 20, patience=1)
    assert drops[:5] == [0, 1, 2, 3, 3] and state.drops == 3
    assert run_plateau([0.5] + [0.0] * 20, patience=1, max_drops=1)[0].drops == 1
    rate = optim.learning_rate(0, schedule="plateau", base=1e-2, plateau=state)
    assert rate == pytest.approx(1e-5)


def test_plateau_min_delta_and_state_round_trips_json():
    # +0.001 is no gain when min_delta is 0.01.
    state, drops = run_plateau([0.5, 0.501, 0.502], patience=2, min_delta=0.01)
    assert drops == [0, 0, 1]
    assert optim.Plateau.from_json(state.to_json()) == state
    assert optim.Plateau.from_json(optim.Plateau().to_json()).best == -math.inf
    with pytest.raises(ValueError, match="patience"):
        optim.plateau_update(state, 0.1, patience=0)


def test_step_constant_and_warmup_rates():
    rates = [
        optim.learning_rate(s, schedule="step", base=0.01, step_every=30)
        for s in (0, 29, 30, 61, 95)
    ]
    np.testing.assert_allclose(rates, [0.01, 0.01, 0.001, 0.0001, 0.00001])
    assert optim.learning_rate(10**6, schedule="constant", base=0.05) == 0.05
    warm = [optim.learning_rate(s, schedule="constant", base=0.1, warmup_steps=4) for s in range(6)]
    np.testing.assert_allclose(warm, [0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.learning_rate(0, schedule="cosine", base=0.1)
    with pytest.raises(ValueError, match="step_every"):
        optim.learning_rate(0, schedule="step", base=0.1)


PARAMS = {
    "conv1_1": {"kernel": jnp.full((3, 3, 3, 2), 2.0), "bias": jnp.full((2,), 5.0)},
    "bn1_1": {"scale": jnp.full((2,), 3.0), "bias": jnp.full((2,), 7.0)},
    "fc8": {"kernel": jnp.full((1, 1, 4, 10), -1.0), "bias": jnp.zeros((10,))},
}


def test_l2_mask_covers_kernels_only_by_default():
    mask = optim.l2_mask(PARAMS)
    assert mask == {
        "conv1_1": {"kernel": True, "bias": False},
        "bn1_1": {"scale": False, "bias": False},
        "fc8": {"kernel": True, "bias": False},
    }
    assert all(jax.tree.leaves(optim.l2_mask(PARAMS, "all")))
    with pytest.raises(ValueError, match="l2 mask"):
        optim.l2_mask(PARAMS, "weights")


def test_l2_penalty_value_and_gradient():
    wd = 5e-4
    penalty = optim.l2_penalty(PARAMS, optim.l2_mask(PARAMS), wd)
    # 54 kernel weights of 2.0 and 40 of -1.0: wd/2 * (54*4 + 40).
    assert float(penalty) == pytest.approx(0.5 * wd * (54 * 4 + 40), rel=1e-6)
    grads = jax.grad(lambda p: optim.l2_penalty(p, optim.l2_mask(p), wd))(PARAMS)
    np.testing.assert_allclose(grads["conv1_1"]["kernel"], wd * 2.0, rtol=1e-6)
    np.testing.assert_allclose(grads["fc8"]["kernel"], -wd, rtol=1e-6)
    assert not np.any(grads["conv1_1"]["bias"]) and not np.any(grads["bn1_1"]["scale"])
    everything = optim.l2_penalty(PARAMS, optim.l2_mask(PARAMS, "all"), wd)
    assert float(everything) == pytest.approx(0.5 * wd * (54 * 4 + 40 + 2 * 25 + 2 * 9 + 2 * 49))
