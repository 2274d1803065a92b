"""Parity with torchvision: run both on the same inputs and compare layer by layer.

Every activation torchvision exposes as a module output (conv, bn, relu, pool, fc6, fc7, logits)
is compared with vgg-flax's activation of the same name; optionally the gradients of the
cross-entropy loss for every parameter (`grad`) and BatchNorm in training mode with its updated
running statistics (`train_bn`). Matmul precision is float32 on both sides. Needs torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from vgg_flax.arch import activation_names
from vgg_flax.convert import to_torchvision, torchvision_modules
from vgg_flax.loader import load


@dataclasses.dataclass
class Difference:
    """max |ours - torch| and that divided by max |torch| for one tensor."""

    name: str
    max_abs: float
    max_rel: float


@dataclasses.dataclass
class ParityReport:
    """The outcome of `compare`: per-layer, per-gradient and per-statistic differences."""

    arch: str
    activations: list[Difference]
    top1_agreement: float
    gradients: list[Difference] = dataclasses.field(default_factory=list)
    running_stats: list[Difference] = dataclasses.field(default_factory=list)

    def worst(self, kind: str = "activations") -> Difference:
        """The entry of `kind` with the largest relative difference."""
        return max(getattr(self, kind), key=lambda d: d.max_rel)


def difference(name: str, ours: Any, theirs: Any) -> Difference:
    """Compare two arrays; the relative figure divides by the largest magnitude of `theirs`."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"{name}: shapes differ, ours {ours.shape} vs torch {theirs.shape}")
    max_abs = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
    return Difference(name, max_abs, max_abs / scale if scale else max_abs)


def randomize(model: Any, seed: int = 0) -> None:
    """Give a torchvision VGG seeded non-trivial biases and BatchNorm parameters and statistics.

    Weights keep torchvision's seeded initialisation; biases (zero there) and BatchNorm's
    weight, bias, running mean and variance (1, 0, 0, 1 there) get random values, so that every
    part of the conversion is exercised.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked") or key.endswith("weight") and value.ndim > 1:
                continue
            noise = torch.rand(value.shape, generator=generator, dtype=value.dtype)
            if key.endswith("running_var") or key.endswith("weight"):  # BatchNorm's scale too
                value.copy_(0.5 + noise)
            else:
                value.copy_(0.2 * (noise - 0.5))


@contextlib.contextmanager
def float32_precision() -> Iterator[None]:
    """Pin matmuls and convolutions to full float32 in both torch and JAX, then restore."""
    import jax
    import torch

    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("float32"):
            yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]


def torch_model(arch: str, state: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> Any:
    """torchvision's `arch` with `state` loaded strictly, or seeded random weights (`randomize`)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    if state is None:
        model = torchvision.models.get_model(arch, weights=None)
        randomize(model, seed)
    else:
        num_classes = int(np.shape(state["classifier.6.weight"])[0])
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        tensors = {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
        model.load_state_dict(tensors, strict=True)
    return model.eval()


def compare(
    arch: str,
    torch_net: Any,
    images: np.ndarray,
    *,
    grad: bool = False,
    train_bn: bool = False,
    seed: int = 0,
    grad_dtype: str = "float64",
) -> ParityReport:
    """Run `torch_net` (a torchvision `arch`) and its vgg-flax conversion on NCHW `images`.

    Activations are compared in float32. Gradients (`grad`) of the mean cross-entropy for
    labels drawn from `seed` are compared in `grad_dtype`, float64 by default: in float32, a
    max-pool window whose two largest inputs differ by less than the rounding error sends its
    gradient to a different input on each side (both valid), which moves early layers' gradients
    by up to ~1e-2 of their scale although the forward passes agree to 1e-6.
    """
    model, variables = load(torch_net.state_dict(), arch, head="keep", dropout_rate=0.0)
    num_classes = model.num_classes
    with float32_precision():
        theirs, their_stats = _forward_torch(arch, torch_net, images, train_bn)
        ours, our_stats = _forward_ours(model, variables, images, train_bn)
    activations = [difference(name, ours[name], theirs[name]) for name in theirs]
    agree = float(np.mean(ours["logits"].argmax(-1) == theirs["logits"].argmax(-1)))
    report = ParityReport(arch, activations, agree)
    if train_bn:
        mapped = to_torchvision({"params": variables["params"], "batch_stats": our_stats}, arch)
        report.running_stats = [
            difference(key, mapped[key], their_stats[key]) for key in their_stats
        ]
    if grad:
        labels = np.random.default_rng(seed).integers(0, num_classes, len(images))
        report.gradients = gradient_differences(
            arch, torch_net, images, labels, train_bn=train_bn, dtype=grad_dtype
        )
    return report


def gradient_differences(
    arch: str,
    torch_net: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    train_bn: bool = False,
    dtype: str = "float64",
) -> list[Difference]:
    """Compare d(mean cross-entropy)/d(parameter) for every parameter, computed in `dtype`."""
    import copy

    import jax
    import jax.numpy as jnp
    import optax
    import torch

    if dtype not in ("float32", "float64"):
        raise ValueError(f"gradient dtype must be float32 or float64, not {dtype!r}")
    net = copy.deepcopy(torch_net).to(getattr(torch, dtype))  # leaves torch_net untouched
    _set_mode(net, train_bn)
    with float32_precision(), jax.enable_x64(dtype == "float64"):
        net.zero_grad(set_to_none=True)
        logits = net(torch.from_numpy(images.astype(dtype)))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
        theirs = {key: p.grad.numpy() for key, p in net.named_parameters()}
        model, variables = load(
            torch_net.state_dict(),
            arch,
            head="keep",
            dropout_rate=0.0,
            dtype=getattr(jnp, dtype),
            param_dtype=getattr(jnp, dtype),
        )
        x = jnp.asarray(images.transpose(0, 2, 3, 1).astype(dtype))

        def loss(params: Any) -> jax.Array:
            state = {"params": params, "batch_stats": variables.get("batch_stats", {})}
            if train_bn:
                logits = model.apply(state, x, train=True, mutable=["batch_stats"])[0]
            else:
                logits = model.apply(state, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        # jit: differentiating op by op is several times slower than compiling the whole graph.
        grads = jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(variables["params"]))
    mapped = to_torchvision(
        {"params": grads, "batch_stats": variables.get("batch_stats", {})}, arch
    )
    return [difference(key, mapped[key], value) for key, value in theirs.items()]


def _set_mode(net: Any, train_bn: bool) -> None:
    import torch

    net.train(train_bn)
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()  # dropout off on both sides; only BatchNorm changes mode


def _forward_torch(
    arch: str, net: Any, images: np.ndarray, train_bn: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    import torch

    outputs: dict[str, np.ndarray] = {}
    modules = dict(net.named_modules())
    hooks = []
    for path, name in torchvision_modules(arch).items():

        def hook(_module: Any, _inputs: Any, output: Any, name: str = name) -> None:
            # Clone now: the in-place ReLU that follows overwrites this very tensor.
            value = output.detach().clone().numpy()
            outputs[name] = value.transpose(0, 2, 3, 1) if value.ndim == 4 else value

        hooks.append(modules[path].register_forward_hook(hook))
    saved = {k: v.clone() for k, v in net.state_dict().items()} if train_bn else None
    _set_mode(net, train_bn)
    try:
        with torch.no_grad():
            net(torch.from_numpy(images))
        stats = {
            key: value.numpy().copy()
            for key, value in net.state_dict().items()
            if train_bn and key.endswith(("running_mean", "running_var"))
        }
    finally:
        for handle in hooks:
            handle.remove()
        net.eval()
        if saved is not None:
            net.load_state_dict(saved)  # a train-mode pass updated the running statistics
    return outputs, stats


def _forward_ours(
    model: Any, variables: dict[str, Any], images: np.ndarray, train_bn: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import jax

    x = images.transpose(0, 2, 3, 1)
    names = activation_names(model.arch, model.batch_norm)
    if not train_bn:
        return jax.tree.map(np.asarray, model.apply(variables, x, features=names)), {}
    found, updates = model.apply(variables, x, train=True, features=names, mutable=["batch_stats"])
    return jax.tree.map(np.asarray, found), jax.tree.map(np.asarray, updates["batch_stats"])
