"""Gatys' normalised VGG-19: per-filter mean activations 1 on its images, logits unchanged."""

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images
from vgg_flax.experiments.perceptual_example import random_trunk

from vgg_flax import create_model
from vgg_flax.perceptual.normalise import mean_activations, normalise_activations
from vgg_flax.preprocessing import preprocess


def _images() -> np.ndarray:
    """Eight 64x64 [0, 1] crops of scikit-learn's two photos, at two scales."""
    crops = []
    for photo in load_sample_images().images:
        for scale in (4, 6):
            small = Image.fromarray(photo).resize((640 // scale, 427 // scale), Image.BICUBIC)
            array = np.asarray(small, np.float32) / 255
            crops += [array[:64, :64], array[-64:, -64:]]
    return np.stack(crops)


def test_normalised_vgg19_keeps_logits_and_has_unit_means():
    model = create_model("vgg19", width=0.125, head_width=16, num_classes=10)
    _, variables = random_trunk(model=model, head=True, bias=0.1)  # small positive biases
    images = _images()
    with jax.default_matmul_precision("float32"):
        normalised = normalise_activations(model, variables, images, preprocessing="torchvision")
        before = mean_activations(model, variables, images, preprocessing="torchvision")
        after = mean_activations(
            model, normalised, images, preprocessing="torchvision", batch_size=4
        )
        x = preprocess(images, "torchvision")
        logits, new_logits = (np.asarray(model.apply(v, x)) for v in (variables, normalised))
    assert len(after) == 16
    for name, mean in after.items():
        live = before[name] > 0
        assert live.mean() > 0.5, name  # the test means something
        np.testing.assert_allclose(mean[live], 1.0, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(mean[~live], 0.0)
    assert np.max(np.abs(new_logits - logits)) / np.max(np.abs(logits)) < 1e-5
    assert any(np.max(np.abs(m - 1)) > 0.5 for m in before.values())  # it did rescale


def test_batch_norm_is_refused():
    model = create_model("vgg11_bn", width=0.125, head_width=8, num_classes=10)
    with pytest.raises(ValueError, match="BatchNorm"):
        normalise_activations(model, {}, np.zeros((1, 32, 32, 3), np.float32))
