"""`vgg-flax parity`: run torchvision and vgg-flax on the same inputs and compare layer by layer.

Every activation torchvision exposes as a module output (conv, bn, relu, pool, fc6, fc7, logits)
is compared with vgg-flax's activation of the same name; optionally the gradients of the
cross-entropy loss for every parameter (`grad`) and BatchNorm in training mode with its updated
running statistics (`train_bn`). Matmul precision is float32 on both sides. Needs torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from vgg_flax import configs
from vgg_flax.convert import from_torchvision, to_torchvision, torchvision_modules
from vgg_flax.model import create_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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
) -> ParityReport:
    """Run `torch_net` (a torchvision `arch`) and its vgg-flax conversion on NCHW `images`."""
    variables = from_torchvision(torch_net.state_dict(), arch)
    num_classes = variables["params"]["fc8"]["bias"].shape[0]
    labels = np.random.default_rng(seed).integers(0, num_classes, len(images))
    with float32_precision():
        theirs, their_grads, their_stats = _run_torch(
            arch, torch_net, images, labels, grad, train_bn
        )
        model = create_model(arch, num_classes=num_classes, dropout_rate=0.0)
        ours, our_grads, our_stats = _run_ours(model, variables, images, labels, grad, train_bn)
    activations = [difference(name, ours[name], theirs[name]) for name in theirs]
    agree = float(np.mean(ours["logits"].argmax(-1) == theirs["logits"].argmax(-1)))
    report = ParityReport(arch, activations, agree)
    if grad:
        mapped = to_torchvision(
            {"params": our_grads, "batch_stats": variables.get("batch_stats", {})}, arch
        )
        report.gradients = [difference(key, mapped[key], their_grads[key]) for key in their_grads]
    if train_bn and our_stats:
        mapped = to_torchvision({"params": variables["params"], "batch_stats": our_stats}, arch)
        report.running_stats = [
            difference(key, mapped[key], their_stats[key]) for key in their_stats
        ]
    return report


def _run_torch(
    arch: str, net: Any, images: np.ndarray, labels: np.ndarray, grad: bool, train_bn: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
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
    net.train(train_bn)
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()  # dropout off on both sides; only BatchNorm changes mode
    try:
        with torch.set_grad_enabled(grad):
            net.zero_grad(set_to_none=True)
            logits = net(torch.from_numpy(images))
            if grad:
                torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
    finally:
        for handle in hooks:
            handle.remove()
        net.eval()
    grads = {k: p.grad.numpy().copy() for k, p in net.named_parameters()} if grad else {}
    stats = {
        key: value.numpy().copy()
        for key, value in net.state_dict().items()
        if key.endswith(("running_mean", "running_var"))
    }
    return outputs, grads, stats if train_bn else {}


def _run_ours(
    model: Any,
    variables: dict[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    grad: bool,
    train_bn: bool,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import optax

    x = jnp.asarray(images.transpose(0, 2, 3, 1))
    names = configs.activation_names(model.config, model.batch_norm)
    stats = variables.get("batch_stats", {})
    mutable = ["batch_stats"] if train_bn else False

    def forward(params: Any, wanted: tuple[str, ...]) -> Any:
        out = model.apply(
            {"params": params, "batch_stats": stats},
            x,
            train=train_bn,
            features=wanted,
            mutable=mutable,
        )
        return out if train_bn else (out, {})

    found, updates = forward(variables["params"], names)
    outputs = {name: np.asarray(value) for name, value in found.items()}
    grads: dict[str, Any] = {}
    if grad:

        def loss(params: Any) -> jax.Array:
            logits = forward(params, ("logits",))[0]["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        # jit: differentiating op by op is several times slower than compiling the whole graph.
        grads = jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(variables["params"]))
    return outputs, grads, jax.tree.map(np.asarray, dict(updates).get("batch_stats", {}))


def load_images(folder: str) -> np.ndarray:
    """Every image in `folder` through torchvision's eval transform, as one NCHW float32 batch."""
    import torch
    from PIL import Image
    from torchvision import transforms

    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    transform = transforms.Compose(
        [
            transforms.Resize(configs.TORCHVISION_RESIZE),
            transforms.CenterCrop(configs.CROP_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(configs.TORCHVISION_MEAN, configs.TORCHVISION_STD),
        ]
    )
    batch = [transform(Image.open(os.path.join(folder, f)).convert("RGB")) for f in files]
    return torch.stack(batch).numpy()


def add_parser(subparsers: Any) -> None:
    """Register `vgg-flax parity`."""
    parser = subparsers.add_parser(
        "parity", help="compare vgg-flax with torchvision layer by layer", description=__doc__
    )
    parser.add_argument("arch", choices=list(configs.TORCHVISION_ARCHS))
    parser.add_argument("--pth", help="weights to compare (default: seeded random weights)")
    parser.add_argument("--images", help="folder of images (default: random inputs)")
    parser.add_argument("--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2, help="random inputs per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad", action="store_true", help="compare loss gradients too")
    parser.add_argument("--train-bn", action="store_true", help="BatchNorm in training mode")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the layer-by-layer comparison; exit status 1 if any relative error exceeds 1e-4."""
    import torch  # before anything that might load TensorFlow

    from vgg_flax.pth import load_pth

    state = load_pth(args.pth) if args.pth else None
    net = torch_model(args.arch, state, args.seed)
    if args.images:
        images = load_images(args.images)
    else:
        generator = torch.Generator().manual_seed(args.seed)
        images = torch.randn(args.batch, 3, *args.size, generator=generator).numpy()
    report = compare(args.arch, net, images, grad=args.grad, train_bn=args.train_bn, seed=args.seed)
    print(f"{args.arch}: inputs {tuple(images.shape)} (NCHW), float32")
    sections = [("activation", report.activations), ("gradient", report.gradients)]
    sections.append(("running stat", report.running_stats))
    worst = 0.0
    for title, rows in sections:
        if rows:
            print(f"{title:<32} {'max |diff|':>12} {'relative':>12}")
        for row in rows:
            print(f"{row.name:<32} {row.max_abs:12.3e} {row.max_rel:12.3e}")
            worst = max(worst, row.max_rel)
    print(f"top-1 agreement: {report.top1_agreement:.1%}")
    return int(worst > 1e-4)
