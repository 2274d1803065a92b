"""The VGG module: both ways of running the head, named features, options and bad input.

The nets are narrow (`NARROW`: conv widths / 8, 32-unit head): what these tests check (the head
run as a classifier or densely, the feature names and shapes, dropout, BatchNorm's updates, input
errors) depends on the layer structure and the spatial sizes, not on the channel counts; the
full-width numerics are torchvision's parity (tests/test_parity.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seeded import model_variables

from vgg_flax import activation_names, create_model
from vgg_flax.models.initializers import kernel_init

NARROW = {"width": 0.125, "head_width": 32}  # conv channels 8 ... 64, fc6/fc7 of 32 units
# XLA's quick compile (no LLVM optimisation) for programs that run a narrow net once: compiling
# dominates them, and the arithmetic is the same.
quick_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def _normal(shape, seed):
    # numpy's: jax.random would compile a program for each shape
    return np.random.default_rng(seed).standard_normal(shape, np.float32)


@pytest.fixture(scope="module")
def vgg_a():
    model = create_model("A", num_classes=10, **NARROW)
    return model, model_variables(model)


def test_dense_average_equals_classification_at_224(vgg_a):
    model, variables = vgg_a
    images = _normal((2, 224, 224, 3), 1)
    logits = model.apply(variables, images)
    dense = model.apply(variables, images, mode="dense")
    score_map = model.apply(variables, images, mode="dense_map")
    assert logits.shape == dense.shape == (2, 10) and score_map.shape == (2, 1, 1, 10)
    np.testing.assert_allclose(dense, logits, rtol=1e-6, atol=1e-6 * float(jnp.abs(logits).max()))
    assert float(jnp.abs(logits).max()) > 0


def test_dense_map_shape_and_average_on_a_larger_image(vgg_a):
    model, variables = vgg_a
    images = _normal((1, 256, 320, 3), 2)
    score_map = model.apply(variables, images, mode="dense_map")
    assert score_map.shape == (1, 256 // 32 - 6, 320 // 32 - 6, 10)
    dense = model.apply(variables, images, mode="dense")
    np.testing.assert_allclose(dense, score_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_classification_takes_any_size_from_32(vgg_a):
    model, variables = vgg_a
    for hw in [(32, 32), (45, 77), (100, 64)]:
        assert model.apply(variables, jnp.ones((1, *hw, 3))).shape == (1, 10)


def test_named_features_alongside_or_instead_of_logits(vgg_a):
    model, variables = vgg_a
    images = _normal((1, 64, 64, 3), 3)
    feats = model.apply(variables, images, features=("relu4_2", "pool5"))
    assert set(feats) == {"relu4_2", "pool5"}
    assert feats["relu4_2"].shape == (1, 8, 8, 64) and feats["pool5"].shape == (1, 2, 2, 64)
    assert float(feats["relu4_2"].min()) >= 0
    both = model.apply(variables, images, features=("fc7", "logits"))
    np.testing.assert_allclose(both["logits"], model.apply(variables, images), rtol=1e-6)
    assert both["fc7"].shape == (1, NARROW["head_width"])
    # fc7 is pre-ReLU, relu7 post-ReLU: check they differ the way they should.
    relu7 = model.apply(variables, images, features=("relu7",))["relu7"]
    np.testing.assert_allclose(relu7, jnp.maximum(both["fc7"], 0), rtol=1e-6)


def test_activation_names_cover_batchnorm_and_lrn():
    assert "bn4_2" in activation_names("D", batch_norm=True)
    assert "norm1" in activation_names("A-LRN")
    assert "conv5_4" in activation_names("E") and "conv5_4" not in activation_names("D")


def test_dropout_acts_only_when_training(vgg_a):
    model, variables = vgg_a
    images = _normal((2, 32, 32, 3), 4)
    first = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(5)})
    second = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(6)})
    assert float(jnp.abs(first - second).max()) > 0
    np.testing.assert_array_equal(model.apply(variables, images), model.apply(variables, images))


def test_batchnorm_model_updates_running_statistics():
    model = create_model("vgg11_bn", num_classes=5, **NARROW)
    images = _normal((2, 32, 32, 3), 7)
    variables = model_variables(model)
    assert set(variables) == {"params", "batch_stats"}
    _, updates = jax.jit(
        lambda v: model.apply(
            v, images, train=True, rngs={"dropout": jax.random.key(9)}, mutable=["batch_stats"]
        )
    )(variables)
    before, after = variables["batch_stats"]["bn1_1"], updates["batch_stats"]["bn1_1"]
    assert float(jnp.abs(after["mean"] - before["mean"]).max()) > 0


@pytest.mark.parametrize(
    ("kind", "conv_std", "fc_std"),
    [
        ("paper", 0.01, 0.01),
        ("torchvision", (2 / (9 * 512)) ** 0.5, 0.01),  # Kaiming fan_out for a 3x3x512x512 conv
        ("glorot", (2 / (9 * 512 + 9 * 512)) ** 0.5, (2 / (4096 + 4096)) ** 0.5),
    ],
)
def test_initialisers_have_their_statistics(kind, conv_std, fc_std):
    key = jax.random.key(10)
    conv = kernel_init(kind, head=False)(key, (3, 3, 512, 512))
    fc7 = kernel_init(kind, head=True)(key, (1, 1, 4096, 4096))
    assert float(jnp.std(conv)) == pytest.approx(conv_std, rel=0.02)
    assert float(jnp.std(fc7)) == pytest.approx(fc_std, rel=0.02)


def test_model_uses_the_chosen_initialiser():
    # Wide enough for the sample std to be within 2% (conv3_1: 18k weights, fc7: 65k). The
    # kernels "lax": init traces the forward pass, whose CPU forms compile slower (same shapes).
    model = create_model(
        "A", weight_init="paper", init_std=0.1, width=0.25, head_width=256, kernels="lax"
    )
    params = quick_jit(model.init)(jax.random.key(10), jnp.zeros((1, 32, 32, 3)))["params"]
    assert float(jnp.std(params["conv3_1"]["kernel"])) == pytest.approx(0.1, rel=0.02)
    assert float(jnp.std(params["fc7"]["kernel"])) == pytest.approx(0.1, rel=0.02)
    assert float(jnp.abs(params["fc6"]["bias"]).max()) == 0.0


def test_bfloat16_compute_with_float32_parameters(vgg_a):
    model = create_model("A", num_classes=10, dtype=jnp.bfloat16, **NARROW)
    images = jnp.ones((1, 32, 32, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(11), images)  # init's dtypes, uncompiled
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
    variables = vgg_a[1]  # float32 variables of the same shapes
    out = jax.jit(model.apply)(variables, images)  # one compile, not one per op
    assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))


def test_a_lrn_runs():
    model = create_model("A-LRN", num_classes=3, **NARROW)
    images = jnp.ones((1, 32, 32, 3))
    out = model.apply(model_variables(model), images, features=("norm1",))
    assert out["norm1"].shape == (1, 32, 32, 8)


@pytest.mark.parametrize(
    ("shape", "mode", "message"),
    [
        ((32, 32, 3), "classify", "rank 3"),
        ((1, 3, 64, 64), "classify", "3 colour channels"),
        ((1, 31, 64, 3), "classify", "at least 32x32"),
        ((1, 200, 300, 3), "dense", "at least 224x224"),
        ((1, 224, 224, 3), "sparse", "unknown mode"),
    ],
)
def test_bad_input_gets_a_clear_error(vgg_a, shape, mode, message):
    model, variables = vgg_a
    with pytest.raises(ValueError, match=message):
        model.apply(variables, jnp.zeros(shape), mode=mode)


def test_dense_evaluation_at_a_trained_size_under_224(vgg_a):
    """trained_pool5=p: fc6 folded with its pooling slides as a p x p window over pool5."""
    model, variables = vgg_a
    images = _normal((1, 96, 128, 3), 3)
    score_map = model.apply(variables, images, mode="dense_map", trained_pool5=2)
    assert score_map.shape == (1, 96 // 32 - 1, 128 // 32 - 1, 10)
    dense = model.apply(variables, images, mode="dense", trained_pool5=2)
    np.testing.assert_allclose(dense, score_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # At the trained size itself the window covers the map: the classifier's own logits.
    crop = images[:, :64, :64]
    np.testing.assert_allclose(
        model.apply(variables, crop, mode="dense", trained_pool5=2),
        model.apply(variables, crop),
        rtol=1e-5,
        atol=1e-5,
    )
    for mode, side in (("classify", 2), ("dense", 7), ("dense", 0)):
        with pytest.raises(ValueError, match="trained_pool5"):
            model.apply(variables, crop, mode=mode, trained_pool5=side)


def test_unknown_feature_name_is_refused(vgg_a):
    model, variables = vgg_a
    with pytest.raises(ValueError, match="unknown feature names.*relu4_2"):
        model.apply(variables, jnp.zeros((1, 32, 32, 3)), features=("relu9_9",))


def test_narrow_net_is_a_public_option_with_the_counted_parameters():
    from vgg_flax.models import arch

    model = create_model("A", width=0.125, head_width=32, num_classes=10)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert params["conv1_1"]["kernel"].shape == (3, 3, 3, 8)
    assert params["conv5_2"]["kernel"].shape == (3, 3, 64, 64)
    assert params["fc6"]["kernel"].shape == (7, 7, 64, 32)
    assert params["fc8"]["kernel"].shape == (1, 1, 32, 10)
    built = sum(x.size for x in jax.tree.leaves(params))
    assert built == arch.count_params("A", num_classes=10, width=0.125, head_width=32)


def test_a_users_own_layer_list_and_average_pooling():
    layers = (16, "M", 32, "1x1-8", "M", "LRN", 32, "M", 32, "M", 32, "M")
    model = create_model(layers, pooling="avg", head_width=16, num_classes=4)
    images = _normal((1, 64, 64, 3), 13)
    variables = model_variables(model, 64)
    assert variables["params"]["conv2_2"]["kernel"].shape == (1, 1, 32, 8)
    feats = model.apply(variables, images, features=("relu1_1", "pool1", "norm3", "logits"))
    expected = feats["relu1_1"].reshape(1, 32, 2, 32, 2, 16).mean(axis=(2, 4))
    np.testing.assert_allclose(feats["pool1"], expected, rtol=1e-6, atol=1e-7)
    assert feats["norm3"].shape == (1, 16, 16, 8) and feats["logits"].shape == (1, 4)
    with pytest.raises(ValueError, match="exactly 5 'M'"):
        create_model((16, "M", 32))
    with pytest.raises(ValueError, match="bad layer list entry 'pool'"):
        create_model((16, "pool", 32, "M", "M", "M", "M", "M"))
    with pytest.raises(ValueError, match="unknown pooling 'min'"):
        create_model("A", pooling="min").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_standard_lax_kernels_compute_the_same_network_and_gradients(vgg_a):
    model, variables = vgg_a
    plain = create_model("A", num_classes=10, kernels="lax", **NARROW)
    images = _normal((2, 32, 32, 3), 15)

    def loss(m, params):
        return jnp.sum(m.apply({"params": params}, images) ** 2)

    # Jitted: one compile of each network, not an eager dispatch of each op of its gradient.
    fast_loss, fast_grads = quick_jit(jax.value_and_grad(lambda p: loss(model, p)))(
        variables["params"]
    )
    lax_loss, lax_grads = quick_jit(jax.value_and_grad(lambda p: loss(plain, p)))(
        variables["params"]
    )
    np.testing.assert_allclose(fast_loss, lax_loss, rtol=1e-5)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(fast_grads), jax.tree.leaves(lax_grads), strict=True
    ):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=str(path))
    with pytest.raises(ValueError, match="unknown kernels 'fast'"):
        create_model("A", kernels="fast").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
