"""Subprocess entry for the training tests.

`python train_runner.py WORKDIR [JSON overrides]` trains the digits config with tiny widths
(train_tiny.TINY) and small overrides. With the environment variable TRAIN_RUNNER_SLOW=S set, each
training batch is delayed S seconds, so a test can stop the run between two checkpoints.

`python train_runner.py --one-step OUT.npz` runs one training step of VGG-A with BatchNorm at
32x32 from the same state and global batch on a mesh of one device and on a mesh of every
device, and saves the variables and updates of each. Tiny widths: the full net replicated on 4
simulated devices needs over 8 GB.

`python train_runner.py --nnx-step OUT.npz` runs one `nnx.jit` training step of the NNX VGG-A
with BatchNorm (`nnx.Optimizer`, dropout drawn) from the same state and batch on a mesh of one
device and on a mesh of every device, and saves the variables before and after each.
"""

from __future__ import annotations

import json
import os
import sys
import time

import train_tiny

SMALL = {
    "batch_size": 8,
    "eval_batch_size": 40,
    "eval_batches": 1,
    "total_steps": 6,
    "eval_every_steps": 3,
    "log_every_steps": 1,
    "checkpoint.every_steps": 2,
    "checkpoint.keep": 2,  # the demo keeps one; the resume tests look at the last two
    "optim.warmup_steps": 2,
    **train_tiny.TINY,
}


def small_config(overrides: dict | None = None):
    """The digits config with SMALL and `overrides` ("a.b" keys address nested fields)."""
    from experiments.configs import digits

    config = digits.get_config()
    for key, value in {**SMALL, **(overrides or {})}.items():
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[last] = value
    return config


def one_step(out: str) -> None:
    """One data-parallel step on one device and on all; saves the new variables and updates of
    each to `out` ("one..." and "all...", with the mesh's size in "one_devices", "all_devices")."""
    import jax
    import numpy as np

    from vgg_flax.models.vgg import create_model
    from vgg_flax.parallel import make_mesh, to_global
    from vgg_flax.train.init import init_variables
    from vgg_flax.train.optim import make_optimizer
    from vgg_flax.train.step import create_state, make_train_step

    model = create_model(
        "A", batch_norm=True, num_classes=10, weight_init="torchvision", **train_tiny.TINY
    )
    # On the host: each mesh's state is made from the same values (a step donates its state).
    variables = jax.device_get(init_variables(model, jax.random.key(0), 32))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "label": rng.integers(0, 10, size=8).astype(np.int32),
    }
    before = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    saved = {}
    for label, devices in (("one", jax.devices()[:1]), ("all", jax.devices())):
        mesh = make_mesh(devices)
        tx = make_optimizer(lambda step: 0.01, momentum=0.9)
        state = create_state(variables, jax.random.key(1), mesh, tx)
        step = make_train_step(model, mesh, tx, weight_decay=5e-4, l2_mask="kernels")
        state, metrics = step(state, to_global(batch, mesh))
        after = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
        saved[label + "_devices"] = mesh.devices.size
        saved[label + "_loss"] = float(metrics["loss"])
        for (path, new), old in zip(
            jax.tree_util.tree_leaves_with_path(after), jax.tree.leaves(before), strict=True
        ):
            name = jax.tree_util.keystr(path)
            new, old = np.asarray(new), np.asarray(old)
            saved[label + name], saved[label + "update" + name] = new, new - old
    np.savez(out, **saved)


# The NNX step's net. "lax" kernels compile in a third of the time of the CPU forms, and the
# equality of 1 and 4 devices does not depend on them; tests/test_nnx.py builds the same net
# in its own process first, so this one reads its compiled init from JAX's persistent cache.
NNX_NET = {
    "arch": "A",
    "batch_norm": True,
    "num_classes": 10,
    "weight_init": "torchvision",
    "kernels": "lax",
    **train_tiny.TINY,
}


def nnx_step(out: str) -> None:
    """One NNX data-parallel step on one device and on all; saves the variables to `out`."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    import vgg_flax.nnx as vnnx
    from vgg_flax.parallel import make_mesh, to_global

    @nnx.jit
    def train_step(model, optimizer, images, labels):
        def loss_fn(model):
            logits = model(images, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "label": rng.integers(0, 10, size=8).astype(np.int32),
    }
    saved = {"devices": jax.device_count()}
    for label, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
        mesh = make_mesh(devices)
        model = vnnx.create_model(**NNX_NET, rngs=nnx.Rngs(params=0, dropout=1))
        optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
        vnnx.replicate(mesh, model, optimizer)
        before = jax.device_get(vnnx.to_linen(model)[1])
        global_batch = to_global(batch, mesh)
        loss = train_step(model, optimizer, global_batch["image"], global_batch["label"])
        after = jax.device_get(vnnx.to_linen(model)[1])
        saved[label + "_loss"] = float(loss)
        for path, value in jax.tree_util.tree_leaves_with_path(after):
            saved[label + jax.tree_util.keystr(path)] = np.asarray(value)
        for path, value in jax.tree_util.tree_leaves_with_path(before):
            saved["before" + jax.tree_util.keystr(path)] = np.asarray(value)
    np.savez(out, **saved)


def main() -> None:
    if sys.argv[1] == "--one-step":
        one_step(sys.argv[2])
        return
    if sys.argv[1] == "--nnx-step":
        nnx_step(sys.argv[2])
        return
    from vgg_flax import data
    from vgg_flax.train import trainer

    slow = float(os.environ.get("TRAIN_RUNNER_SLOW", "0"))
    if slow:
        make = data.train_iterator

        class Slow:
            def __init__(self, inner):
                self.inner = inner

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def __next__(self):
                time.sleep(slow)
                return next(self.inner)

        data.train_iterator = lambda *a, **k: Slow(make(*a, **k))
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    summary = trainer.train(small_config(overrides), sys.argv[1])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
