"""vgg_flax.nnx: the NNX front end gives the Linen module's numbers, names and training.

One narrow net per layer kind on 32x32 images (plain convs: A; BatchNorm: A with it; LRN:
A-LRN; 1x1 convs: C, with BatchNorm): logits, named features, gradients, BatchNorm's updated
statistics and dropout, NNX against the Linen `VGG` (which tests/test_parity.py checks against
torchvision; the archs' layer lists are tests/test_arch.py's shapes and parameter counts, and
the bridge wraps whichever layers a net has); one full-width VGG-D's
logits, features and gradients too. The conversions round-trip exactly; a data-parallel NNX
training step on 4 simulated devices equals one device (a subprocess: JAX reads XLA_FLAGS when
it starts). `create_model(..., pretrained=...)` here with a saved net (the hub's repositories:
tests/test_hub.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from seeded import he_variables
from test_train_loop import finish, start
from train_runner import NNX_NET

import vgg_flax
import vgg_flax.nnx as vnnx
from vgg_flax import activation_names, create_model
from vgg_flax.train.init import init_variables

# Narrow nets: convs of 4 ... 32 channels. The NNX module runs the Linen one, so what is checked
# (the bridge's names, state, updates and rngs) does not depend on the widths; "lax" kernels and
# FAST compile in a third of the time of the CPU forms, which the full-width net keeps.
NARROW = {"width": 1 / 16, "head_width": 16, "num_classes": 5, "weight_init": "torchvision"}
# One arch per layer kind the bridge carries: what is tested is the NNX bridge (names, state,
# updates, rngs), not the arch; B, D and E only repeat A's and C's layers.
ARCHS = [("A", False), ("A", True), ("A-LRN", False), ("C", True)]
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
TOL = {"rtol": 1e-6, "atol": 1e-6}  # atol: of each leaf's largest magnitude
# Two eager runs of one net: XLA:CPU's threaded convolutions may sum in another order each time
# (a few 1e-6 of the largest logit seen under load).
EAGER_TOL = {"rtol": 1e-5, "atol": 1e-5}


def narrow(arch: str = "A", batch_norm: bool = False, **options):
    """A narrow net and seeded random variables of unit-scale activations (no init compile)."""
    model = create_model(arch, batch_norm=batch_norm, **{**NARROW, "kernels": "lax", **options})
    return model, he_variables(vnnx.variable_shapes(model))


def images(n: int = 2, height: int = 32, width: int = 32, seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (n, height, width, 3))


def loss_of(logits: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(len(logits))).mean()


def assert_trees_close(actual, expected, **tolerance) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
    ):
        # The absolute floor is relative to the leaf's scale (gradients of convs before a
        # BatchNorm are zero up to rounding).
        a, b = np.asarray(a), np.asarray(b)
        rtol = tolerance.get("rtol", 0.0)
        floor = tolerance.get("atol", 0.0) * float(np.max(np.abs(b), initial=1e-30))
        # assert_allclose's own test, without its report (seconds on fc6's 100M values): the
        # report only when some value is off (or NaN, which fails `<=`).
        if a.shape != b.shape or not np.all(np.abs(a - b) <= floor + rtol * np.abs(b)):
            np.testing.assert_allclose(
                a, b, rtol=rtol, atol=floor, err_msg=jax.tree_util.keystr(path)
            )


@pytest.mark.parametrize("arch, batch_norm", ARCHS, ids=[f"{a}{'_bn' * b}" for a, b in ARCHS])
def test_nnx_gives_linen_logits_features_gradients_and_batch_stats(arch, batch_norm):
    linen, variables = narrow(arch, batch_norm)
    names = activation_names(arch, batch_norm)
    wanted = (names[1], names[len(names) // 2], "fc7", "logits")
    x = images()
    masks = {
        name: jax.random.bernoulli(jax.random.key(i), 0.5, (2, NARROW["head_width"]))
        for i, name in enumerate(("fc6", "fc7"))
    }

    def run_linen(variables):
        def loss(params):
            logits, updates = linen.apply(
                {**variables, "params": params},
                x,
                train=True,
                dropout_masks=masks,
                mutable=["batch_stats"],
            )
            return loss_of(logits), updates

        (_, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return linen.apply(variables, x, features=wanted), grads, updates

    def run_nnx(graphdef, state):
        # NNX's functional form (split/merge) inside one jax.jit with Linen: it compiles once.
        model = nnx.merge(graphdef, state)
        features = model(x, features=wanted)
        grads = nnx.grad(lambda m: loss_of(m(x, train=True, dropout_masks=masks)))(model)
        return features, grads, nnx.state(model)

    model = vnnx.from_linen(linen, variables)
    graphdef, state = nnx.split(model)
    both = jax.jit(lambda v, s: (run_nnx(graphdef, s), run_linen(v)), compiler_options=FAST)
    (features, grads, state), (ref_features, ref_grads, ref_updates) = both(variables, state)
    nnx.update(model, state)
    assert features.keys() == set(wanted) and float(jnp.abs(features["logits"]).max()) > 0.1
    assert_trees_close(features, ref_features, **TOL)
    assert_trees_close(nnx.to_pure_dict(grads), ref_grads, **TOL)
    # The training call updated the model's running statistics as Linen's mutable apply does.
    _, now = vnnx.to_linen(model)
    if batch_norm:
        assert_trees_close(now["batch_stats"], ref_updates["batch_stats"], **TOL)
        assert not np.allclose(now["batch_stats"]["bn1_1"]["mean"], 0)
    else:
        assert "batch_stats" not in now and not ref_updates


def test_same_parameter_names_and_exact_round_trips():
    linen, variables = narrow("A", batch_norm=True)
    model = vnnx.from_linen(linen, variables)
    # NNX attributes carry the Linen names: model.conv1_1["kernel"], model.bn1_1["mean"].
    assert model.conv1_1["kernel"].get_value() is variables["params"]["conv1_1"]["kernel"]
    assert isinstance(model.bn1_1["mean"], nnx.BatchStat)
    assert nnx.to_pure_dict(nnx.state(model, nnx.Param)) == variables["params"]
    back_model, back = vnnx.to_linen(model)
    assert back_model is linen and back.keys() == variables.keys()
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    again = vnnx.from_linen(*vnnx.to_linen(model))
    assert jax.tree.all(
        jax.tree.map(
            lambda a, b: a is b,
            nnx.to_pure_dict(nnx.state(again)),
            nnx.to_pure_dict(nnx.state(model)),
        )
    )


def test_create_model_initialises_as_linen_from_the_params_stream():
    model = vnnx.create_model(**NNX_NET, rngs=nnx.Rngs(params=3, dropout=4))
    linen = create_model(**NNX_NET)
    expected = init_variables(linen, nnx.Rngs(params=3).params(), 32)
    assert model.linen == linen
    assert_trees_close(vnnx.to_linen(model)[1], expected, rtol=0, atol=0)


def test_dropout_draws_from_the_model_stream_and_advances():
    linen, variables = narrow("A")
    model = vnnx.from_linen(linen, variables, rngs=nnx.Rngs(dropout=7))
    x = images()
    first, second = model(x, train=True), model(x, train=True)
    stream = nnx.Rngs(dropout=7).fork()  # what the model keeps of the rngs it was given
    for out in (first, second):
        key = stream.dropout()
        expected = linen.apply(variables, x, train=True, rngs={"dropout": key})
        np.testing.assert_allclose(out, expected, **TOL)
    assert not np.allclose(first, second)  # the stream advanced between the calls
    called = model(x, train=True, rngs=nnx.Rngs(dropout=8))
    key = nnx.Rngs(dropout=8).dropout()
    np.testing.assert_allclose(
        called, linen.apply(variables, x, train=True, rngs={"dropout": key}), **TOL
    )
    with pytest.raises(ValueError, match="'dropout' rng stream"):
        vnnx.from_linen(linen, variables)(x, train=True)
    with pytest.raises(TypeError, match=r"rngs=nnx.Rngs\(dropout=k\)"):
        model(x, train=True, rngs=jax.random.key(0))
    np.testing.assert_array_equal(vnnx.from_linen(linen, variables)(x), linen.apply(variables, x))


def test_dense_modes_and_padded_batches():
    linen, variables = narrow("A")
    model = vnnx.from_linen(linen, variables)
    x = images(2, 224, 256)
    valid = jnp.array([[224, 256], [224, 224]], jnp.int32)

    def run(call):
        return [call(x, mode="dense"), call(x, mode="dense_map", valid_hw=valid)]

    ours = nnx.jit(lambda m: run(m))(model)
    theirs = jax.jit(lambda v: run(lambda *a, **k: linen.apply(v, *a, **k)))(variables)
    assert ours[1].shape == (2, 1, 2, 5)
    assert_trees_close(ours, theirs, **TOL)


def test_full_width_vgg16_logits_features_and_gradients():
    linen = create_model("D")
    model = vnnx.from_linen(linen, he_variables(vnnx.variable_shapes(linen)))
    assert model.fc6["kernel"].shape == (7, 7, 512, 4096)
    graphdef, state = nnx.split(model)
    x = images(1)
    wanted = ("relu3_3", "pool5", "fc7", "logits")

    def run_nnx(state):
        model = nnx.merge(graphdef, state)
        grads = nnx.grad(lambda m: loss_of(m(x)))(model)
        return model(x, features=wanted), nnx.to_pure_dict(grads)

    def run_linen(variables):
        grads = jax.grad(lambda p: loss_of(linen.apply({**variables, "params": p}, x)))
        return linen.apply(variables, x, features=wanted), grads(variables["params"])

    both = jax.jit(lambda s, v: (run_nnx(s), run_linen(v)), compiler_options=FAST)
    ours, theirs = both(state, vnnx.to_linen(model)[1])
    assert float(jnp.abs(theirs[0]["logits"]).max()) > 0.1
    assert_trees_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_saved_and_pretrained_weights_load_as_nnx(tmp_path, monkeypatch):
    linen, variables = narrow("A", batch_norm=True)
    vgg_flax.save(tmp_path / "net", linen, variables)
    model, usage = vnnx.load(tmp_path / "net", rngs=nnx.Rngs(0))
    assert usage.architecture == vgg_flax.architecture(linen)
    x = images()
    assert_trees_close(model(x), linen.apply(variables, x), **EAGER_TOL)
    # pretrained: vgg_flax.pretrained's result (the download itself is tests/test_pretrained.py's)
    seen = {}

    def fake_pretrained(name, **options):
        seen.update(name=name, **options)
        return vgg_flax.load(tmp_path / "net")

    monkeypatch.setattr("vgg_flax.weights.download.pretrained", fake_pretrained)
    model, _ = vnnx.pretrained("vgg11_bn", num_classes=5, key=1)
    assert seen == {"name": "vgg11_bn", "num_classes": 5, "key": 1}
    assert_trees_close(model(x), linen.apply(variables, x), **EAGER_TOL)
    # create_model(pretrained=True): the arch's torchvision weights through vgg_flax.pretrained,
    # a fresh fc8 (if any) drawn from the "params" stream. (The hub: tests/test_hub.py.)
    seen.clear()
    model = vnnx.create_model("A", batch_norm=True, pretrained=True, rngs=nnx.Rngs(params=2))
    assert seen == {
        "name": "vgg11_bn", "num_classes": None, "key": nnx.Rngs(params=2).params(),
        "batch_norm": True,
    }  # fmt: skip
    assert_trees_close(model(x), linen.apply(variables, x), **EAGER_TOL)
    # A path: vgg_flax.load's; another num_classes gets a fresh fc8, the rest are the file's.
    model = vnnx.create_model(pretrained=tmp_path / "net", num_classes=3, rngs=nnx.Rngs(0))
    fresh = vnnx.to_linen(model)[1]["params"]
    assert fresh["fc8"]["kernel"].shape == (1, 1, 16, 3) and model.linen.num_classes == 3
    assert np.array_equal(fresh["fc7"]["kernel"], variables["params"]["fc7"]["kernel"])
    with pytest.raises(ValueError, match=r"holds VGG A \(batch_norm=True\), not 'vgg11'"):
        vnnx.create_model("vgg11", pretrained=tmp_path / "net", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="a layer list has none"):
        vnnx.create_model([8, "M"] * 5, pretrained=True, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="pretrained must be True, a weights name"):
        vnnx.create_model("A", pretrained=1, rngs=nnx.Rngs(0))


def test_bad_input_is_refused_with_the_fix():
    linen, variables = narrow("A")
    with pytest.raises(ValueError, match=r"do not fit VGG A .*fc8/kernel \(1, 1, 16, 5\)"):
        vnnx.from_linen(create_model("A", **{**NARROW, "num_classes": 6}), variables)
    with pytest.raises(ValueError, match="missing: batch_stats/bn1_1/mean"):
        vnnx.from_linen(create_model("A", batch_norm=True, **NARROW), variables)
    with pytest.raises(TypeError, match="vgg_flax.VGG Linen module"):
        vnnx.from_linen(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), variables)
    with pytest.raises(ValueError, match="'params' collection"):
        vnnx.from_linen(linen, variables["params"])
    # The Linen factory builds modules only; its refusal names the NNX factory's pretrained=.
    with pytest.raises(ValueError, match=r"vgg_flax.nnx.create_model\('vgg11', pretrained=True"):
        create_model("vgg11", pretrained=True)


def test_training_step_on_four_devices_equals_one_device(tmp_path):
    out = tmp_path / "nnx_step.npz"
    # FAST's options as flags: both meshes compile with them, so the comparison is unchanged.
    flags = "--xla_force_host_platform_device_count=4 " + " ".join(
        f"--{name}={str(value).lower()}" for name, value in FAST.items()
    )
    finish(start("--nnx-step", str(out), extra_env={"XLA_FLAGS": flags}))
    saved = np.load(out)
    assert int(saved["devices"]) == 4
    names = sorted(name[len("one") :] for name in saved.files if name.startswith("one["))
    assert len(names) == 2 * 8 + 3 * 2 + 2 * 8 + 2 * 8  # convs, fc6-8, BN scale/bias, BN stats
    for name in names:
        one, four, before = saved["one" + name], saved["four" + name], saved["before" + name]
        floor = max(1e-8, 1e-6 * float(np.max(np.abs(one))))
        np.testing.assert_allclose(four, one, rtol=1e-5, atol=floor, err_msg=name)
        update, reference = four - before, one - before
        gap = np.linalg.norm(update - reference)
        assert gap <= 1e-3 * np.linalg.norm(reference) + 1e-7 * np.sqrt(reference.size), name
    assert float(saved["four_loss"]) == pytest.approx(float(saved["one_loss"]), rel=1e-5)
