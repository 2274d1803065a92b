"""The optimiser rules of section 3.1: plateau drops, step schedule, warm-up, the L2 term."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_flax.train import optim

PARAMS0 = {"w": jnp.ones((2,))}


def run_plateau(accuracies, **kwargs):
    tx = optim.make_optimizer(optim.schedule("plateau", base=1e-2))
    state, drops = tx.init(PARAMS0), []
    for accuracy in accuracies:
        state = optim.record_evaluation(state, accuracy, **kwargs)
        drops.append(int(optim.plateau(state).drops))
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


def test_plateau_never_drops_more_than_max_drops_and_scales_the_update():
    state, drops = run_plateau([0.5] + [0.0] * 20, patience=1)
    assert drops[:5] == [0, 1, 2, 3, 3] and int(optim.plateau(state).drops) == 3
    assert (
        int(optim.plateau(run_plateau([0.5] + [0.0] * 20, patience=1, max_drops=1)[0]).drops) == 1
    )
    tx = optim.make_optimizer(optim.schedule("plateau", base=1e-2), momentum=0.0)
    updates, state = tx.update({"w": jnp.full((2,), 2.0)}, state)
    np.testing.assert_allclose(updates["w"], -2.0 * 1e-5, rtol=1e-6)  # 1e-2 / 10**3
    assert float(optim.learning_rate(state)) == pytest.approx(1e-5, rel=1e-6)


def test_plateau_min_delta_and_bad_patience():
    # +0.001 is no gain when min_delta is 0.01.
    state, drops = run_plateau([0.5, 0.501, 0.502], patience=2, min_delta=0.01)
    assert drops == [0, 0, 1]
    with pytest.raises(ValueError, match="patience"):
        optim.record_evaluation(state, 0.1, patience=0)


def test_plateau_rule_runs_jitted_like_the_trainer_does():
    tx = optim.make_optimizer(optim.schedule("plateau", base=1e-2))
    record = jax.jit(lambda s, a: optim.record_evaluation(s, a, patience=1))
    state = record(record(tx.init(PARAMS0), 0.5), 0.4)
    assert int(optim.plateau(state).drops) == 1 and float(optim.plateau(state).best) == 0.5


def rates(name, steps, **kwargs):
    return [float(optim.schedule(name, **kwargs)(jnp.int32(s))) for s in steps]


def test_step_constant_and_warmup_rates():
    got = rates("step", (0, 29, 30, 61, 95), base=0.01, step_every=30)
    np.testing.assert_allclose(got, [0.01, 0.01, 0.001, 0.0001, 0.00001], rtol=1e-6)
    assert rates("constant", (10**6,), base=0.05) == pytest.approx([0.05])
    warm = rates("constant", range(6), base=0.1, warmup_steps=4)
    np.testing.assert_allclose(warm, [0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.schedule("cosine", base=0.1)
    with pytest.raises(ValueError, match="step_every"):
        optim.schedule("step", base=0.1)


def test_optimizer_is_pytorch_sgd_with_momentum_and_records_each_steps_rate():
    tx = optim.make_optimizer(optim.schedule("step", base=0.1, step_every=2), momentum=0.9)
    state, grad = tx.init(PARAMS0), {"w": jnp.ones((2,))}
    velocity, got, seen = 0.0, [], []
    for _ in range(4):
        updates, state = tx.update(grad, state)
        velocity = 0.9 * velocity + 1.0  # torch.optim.SGD: v <- m v + g; w <- w - lr v
        got.append(float(updates["w"][0]))
        seen.append(float(optim.learning_rate(state)))
    lrs = [0.1, 0.1, 0.01, 0.01]
    np.testing.assert_allclose(seen, lrs, rtol=1e-6)
    np.testing.assert_allclose(
        got, [-lr * v for lr, v in zip(lrs, [1, 1.9, 2.71, 3.439], strict=True)], rtol=1e-6
    )


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
