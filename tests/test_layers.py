"""Layers with PyTorch semantics, compared with real torch."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vgg_flax.models.layers import (
    BatchNorm,
    adaptive_avg_pool,
    fold_adaptive_pool,
    local_response_norm,
)


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("hw", [(1, 1), (7, 7), (9, 13), (14, 14), (2, 3), (5, 20), (17, 8)])
def test_adaptive_avg_pool_matches_torch(hw):
    x = np.random.default_rng(0).standard_normal((2, *hw, 4)).astype(np.float32)
    ours = np.asarray(adaptive_avg_pool(jnp.asarray(x), (7, 7)))
    theirs = torch.nn.functional.adaptive_avg_pool2d(to_nchw(x), (7, 7)).numpy()
    np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5), (6, 6)])
def test_folded_pooling_equals_torch_pooling_then_the_kernel(hw):
    """fc6 after torch's adaptive pooling to 7x7 equals its folded window on the map itself."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *hw, 4)).astype(np.float32)
    kernel = rng.standard_normal((7, 7, 4, 5)).astype(np.float32)
    pooled = torch.nn.functional.adaptive_avg_pool2d(to_nchw(x), (7, 7))
    theirs = torch.nn.functional.conv2d(pooled, torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
    folded = np.asarray(fold_adaptive_pool(jnp.asarray(kernel), hw))
    assert folded.shape == (*hw, 4, 5)
    ours = np.einsum("nhwc,hwcd->nd", x, folded)
    np.testing.assert_allclose(ours, theirs.numpy()[:, :, 0, 0], rtol=1e-5, atol=1e-5)


def test_local_response_norm_matches_torch():
    x = np.random.default_rng(1).standard_normal((2, 5, 6, 16)).astype(np.float32) * 30
    ours = np.asarray(local_response_norm(jnp.asarray(x)))
    lrn = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    theirs = lrn(to_nchw(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # The normalisation must actually bite at this scale, or the test proves nothing.
    assert np.abs(ours - x / 2**0.75).max() > 1e-2


def test_batchnorm_matches_torch_in_train_and_eval():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 3, 5, 8)) * 3 + 1).astype(np.float32)
    scale, bias = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8)
    mean, var = rng.standard_normal(8).astype(np.float32), rng.uniform(0.5, 2, 8)
    torch_bn = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        torch_bn.weight.copy_(torch.from_numpy(scale))
        torch_bn.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
        torch_bn.running_mean.copy_(torch.from_numpy(mean))
        torch_bn.running_var.copy_(torch.from_numpy(var.astype(np.float32)))
    variables = {
        "params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias, jnp.float32)},
        "batch_stats": {"mean": jnp.asarray(mean), "var": jnp.asarray(var, jnp.float32)},
    }
    bn = BatchNorm()
    torch_bn.eval()
    eval_out = bn.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(
        eval_out, torch_bn(to_nchw(x)).detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5
    )
    torch_bn.train()
    train_out, updated = bn.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    expected = torch_bn(to_nchw(x)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(train_out, expected, rtol=1e-5, atol=1e-5)
    stats = updated["batch_stats"]
    np.testing.assert_allclose(stats["mean"], torch_bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], torch_bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
