"""Masked dense evaluation on padded batches against each image at its own size (config A).

Random weights with He scaling and random biases keep activations of order one through the whole
net, and non-zero biases and BatchNorm shifts make padded positions non-zero unless masked.
The net is narrow (conv widths / 8, a 32-unit head): masking is about which spatial positions
reach the head, the same at any channel count, and a 512x512 batch of the full net was minutes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seeded import model_variables

from vgg_flax import create_model
from vgg_flax.evaluate import Scorer, evaluate_arrays


@pytest.fixture(scope="module")
def net():
    # Config A with BatchNorm (its shift is non-zero at padding), narrow (see the docstring).
    model = create_model("vgg11_bn", width=0.125, head_width=32)
    return model, model_variables(model, 224)


def test_padded_masked_batch_equals_each_image_alone(net):
    model, variables = net
    dense = jax.jit(functools.partial(model.apply, mode="dense"))
    rng = np.random.default_rng(1)
    sizes = [(224, 512), (512, 224), *(tuple(int(s) for s in rng.integers(224, 513, 2)),)]
    images = [rng.standard_normal((h, w, 3), np.float32) for h, w in sizes]
    alone = np.concatenate([dense(variables, im[None]) for im in images])
    assert np.abs(alone).max() > 1.0  # meaningful scores, not a vanishing signal

    padded = np.zeros((len(images), 512, 512, 3), np.float32)
    for row, image in enumerate(images):
        padded[row, : image.shape[0], : image.shape[1]] = image
    masked = np.asarray(dense(variables, padded, valid_hw=jnp.asarray(sizes, jnp.int32)))
    tolerance = 1e-5 * np.abs(alone).max()
    np.testing.assert_allclose(masked, alone, rtol=0, atol=tolerance)
    # Claiming the whole padded image as valid lets the padding leak in: the test can fail.
    unmasked = np.asarray(dense(variables, padded, valid_hw=jnp.full((3, 2), 512, jnp.int32)))
    assert np.abs(unmasked - alone).max() > 100 * tolerance

    # The batched protocol path (one padded shape): the soft-max of each image's own scores.
    scorer = Scorer(model, variables)
    examples = [{0: im} for im in images]
    got = evaluate_arrays([scorer], examples, "dense", flips=False, batch_size=3, align=512)
    np.testing.assert_allclose(got, jax.nn.softmax(alone, axis=-1), rtol=1e-4, atol=1e-5)
    assert scorer._posteriors._cache_size() == len(scorer.shapes) == 1


def test_dense_at_224_without_flips_is_softmax_of_classifier_logits(net):
    model, variables = net
    image = np.random.default_rng(2).standard_normal((224, 224, 3), np.float32)
    logits = jax.jit(model.apply)(variables, image[None])  # torchvision-style classifier
    got = evaluate_arrays([Scorer(model, variables)], [{224: image}], "dense", flips=False)
    np.testing.assert_allclose(got, jax.nn.softmax(logits, axis=-1), rtol=1e-4, atol=1e-5)


def test_valid_hw_is_refused_in_classify_mode(net):
    model, variables = net
    with pytest.raises(ValueError, match="valid_hw needs mode"):
        model.apply(variables, jnp.zeros((1, 224, 224, 3)), valid_hw=jnp.full((1, 2), 224))


def test_dense_map_keeps_valid_positions_and_zeroes_the_rest(net):
    model, variables = net
    dense_map = jax.jit(functools.partial(model.apply, mode="dense_map"))
    image = np.random.default_rng(3).standard_normal((230, 290, 3), np.float32)
    alone = np.asarray(dense_map(variables, image[None]))  # (1, 1, 3, classes): 230//32-6 = 1
    padded = np.zeros((1, 288, 320, 3), np.float32)
    padded[0, :230, :290] = image
    got = np.asarray(dense_map(variables, padded, valid_hw=jnp.array([[230, 290]])))
    assert alone.shape[1:3] == (1, 3) and got.shape[1:3] == (3, 4)
    np.testing.assert_allclose(got[:, :1, :3], alone, rtol=0, atol=1e-5 * np.abs(alone).max())
    assert not got[:, 1:].any() and not got[:, :, 3:].any()
