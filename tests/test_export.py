"""`vgg-flax export`: the StableHLO and SavedModel exports reload elsewhere and give model.apply's
logits (a narrow VGG-A with BatchNorm at 32x32, two batch sizes through the symbolic batch)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_tiny import TINY

import vgg_flax
from vgg_flax.cli import export as export_cli
from vgg_flax.cli import main
from vgg_flax.inference import export

SIZE = 32
# Runs in a fresh process with plain JAX: the export needs nothing of vgg-flax.
RELOAD = """
import sys
import jax, numpy as np
with open(sys.argv[1], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
for name in sys.argv[2:]:
    np.save(name + ".out.npy", np.asarray(exported.call(np.load(name))))
assert not any(m.startswith("vgg_flax") for m in sys.modules), "vgg_flax was imported"
"""


def random_variables(model, seed: int = 0) -> dict:
    """Seeded random variables of `model` for SIZE inputs, drawn with NumPy (no init compile).

    Kernels are scaled by 1/sqrt(fan-in) so the logits stay near 1; biases and BatchNorm's
    statistics are non-trivial, so that every part of the forward pass is exercised.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.standard_normal(leaf.shape, dtype=np.float32) / np.float32(fan_in) ** 0.5
        noise = rng.random(leaf.shape, dtype=np.float32)
        return 0.5 + noise if name in ("var", "scale") else 0.2 * (noise - 0.5)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved narrow VGG-A with BatchNorm, its random variables and two input batches."""
    folder = tmp_path_factory.mktemp("export")
    model = vgg_flax.create_model("A", batch_norm=True, num_classes=10, **TINY)
    variables = random_variables(model)
    path = vgg_flax.save(folder / "model", model, variables)
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((n, SIZE, SIZE, 3), dtype=np.float32) for n in (2, 3)]
    return folder, path, model, variables, batches


def test_stablehlo_reloads_without_vgg_flax(checkpoint):
    folder, path, model, variables, batches = checkpoint
    out = folder / "vgg.stablehlo"
    assert main(["export", path, str(out), "--image-size", str(SIZE)]) == 0
    names = []
    for i, batch in enumerate(batches):
        names.append(str(folder / f"batch{i}.npy"))
        np.save(names[-1], batch)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", RELOAD, str(out), *names], check=True, env=env, cwd="/")
    for name, batch in zip(names, batches, strict=True):
        expected = np.asarray(model.apply(variables, batch))
        np.testing.assert_allclose(np.load(name + ".out.npy"), expected, rtol=0, atol=1e-6)
    exported = export.load_stablehlo(str(out))
    assert exported.platforms == export.DEFAULT_PLATFORMS
    assert export_cli.PLATFORMS.split(",") == list(export.DEFAULT_PLATFORMS)


def test_savedmodel_reloads_in_tensorflow(checkpoint):
    import tensorflow as tf

    folder, path, model, variables, batches = checkpoint
    out = folder / "savedmodel"
    argv = ["export", path, str(out), "--format", "savedmodel", "--image-size", str(SIZE)]
    assert main([*argv, "--platforms", "cpu"]) == 0
    reloaded = tf.saved_model.load(str(out))
    serving = reloaded.signatures["serving_default"]
    for batch in batches:
        expected = np.asarray(model.apply(variables, batch))
        np.testing.assert_allclose(reloaded.serve(batch).numpy(), expected, rtol=0, atol=1e-6)
        (signature_out,) = serving(images=tf.constant(batch)).values()
        np.testing.assert_allclose(signature_out.numpy(), expected, rtol=0, atol=1e-6)
    assert main(argv) == 2  # the folder exists now: refused


def test_export_refuses_tiny_images(checkpoint):
    _, _, model, variables, _ = checkpoint
    with pytest.raises(ValueError, match="at least 32"):
        export.export_stablehlo(model, variables, image_size=16)
