"""Parity with torchvision: run both on the same inputs and compare layer by layer.

Every activation torchvision exposes as a module output (conv, bn, relu, pool, fc6, fc7, logits)
is compared with vgg-flax's activation of the same name; optionally the gradients of the
cross-entropy loss for every parameter (`grad`) and BatchNorm in training mode with its updated
running statistics (`train_bn`). Matmul precision is float32 on both sides. Needs torch.

Values that are zero by construction (the gradients of conv biases before BatchNorm) are pure
rounding noise on both sides: their relative error is meaningless, so `with_floor` measures
every tensor against at least a fraction of the largest magnitude of its kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from vgg_flax.formats.torchvision import (
    from_torchvision,
    model_fields,
    to_flax_layout,
    to_torch_layout,
    torchvision_entries,
    torchvision_modules,
)
from vgg_flax.models.arch import (
    HEAD_INPUT_SIZE,
    HEAD_WIDTH,
    TORCHVISION_ARCHS,
    activation_names,
    layers,
    resolve,
)
from vgg_flax.models.vgg import create_model

# The absolute floor of a comparison: this fraction of the largest magnitude among all tensors
# of a kind (all gradients, all momentum buffers, ...). Values that are zero by construction are
# rounding noise of ~1e-15 of the largest in float64, which the floor makes ~1e-12 (below the
# training parity's 1e-9); a real error in a small tensor is of its own size and still shows.
FLOOR_FRACTION = 1e-3
# Elements per block of `difference` (8 MB in float64).
_BLOCK = 1 << 20


@dataclasses.dataclass
class Difference:
    """max |ours - torch|, that divided by max(max |torch|, floor), and max |torch| (`scale`)."""

    name: str
    max_abs: float
    max_rel: float
    scale: float = 0.0


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


def difference(name: str, ours: Any, theirs: Any, floor: float = 0.0) -> Difference:
    """Compare two arrays; the relative figure divides by max(max |theirs|, floor)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape:
        raise ValueError(f"{name}: shapes differ, ours {ours.shape} vs torch {theirs.shape}")
    if not ours.ndim:
        ours, theirs = ours[None], theirs[None]
    # Slices along the first axis, not reshaped rows: strided views stay views.
    rows = _rows(ours)
    blocks = (
        (ours[start : start + rows], theirs[start : start + rows])
        for start in range(0, len(ours), rows)
    )
    return _relative(_extremes(name, blocks), floor)


def layout_differences(
    variables: Mapping[str, Any], arch: str, theirs: Mapping[str, Any]
) -> list[Difference]:
    """`difference` of every tensor of `variables` with torch's tensor of the same key.

    `theirs`: torchvision key -> array in torch's layout (a key missing there is skipped), in
    any memory order. Nothing is converted whole: a torch array stored output-channel-minor
    (Linear weights kept as the transpose of an (in, out) array, as `train_parity` does) is
    compared as a view of vgg-flax's layout; others are re-laid a block of channels at a time.
    Any head width works.
    """
    params, stats = variables.get("params", {}), variables.get("batch_stats", {})
    found = []
    for entry in torchvision_entries(arch):  # keys and layouts only; shapes come from the arrays
        tree = params if entry.collection == "params" else stats
        if entry.name not in tree.get(entry.layer, {}) or entry.key not in theirs:
            continue
        ours, torch_value = np.asarray(tree[entry.layer][entry.name]), np.asarray(theirs[entry.key])
        if ours.size != torch_value.size or ours.shape[-1] != len(torch_value):
            raise ValueError(
                f"{entry.key}: shapes differ, ours {ours.shape} vs torch {torch_value.shape}"
            )
        view = _flax_view(torch_value, entry.kind)
        if view.ndim < 2 or view.strides[-1] == view.itemsize:  # output channels innermost
            # Both in the view's memory order: blocks read contiguous runs on both sides.
            order = np.argsort([-abs(stride) for stride in view.strides], kind="stable")
            found.append(difference(entry.key, ours.transpose(order), view.transpose(order)))
            continue
        rows = _rows(torch_value)
        blocks = (  # output channels last in ours, first in torch's
            (
                ours[..., start : start + rows],
                to_flax_layout(torch_value[start : start + rows], entry.kind),
            )
            for start in range(0, len(torch_value), rows)
        )
        found.append(_extremes(entry.key, blocks))
    return found


def _flax_view(value: np.ndarray, kind: str) -> np.ndarray:
    """A torch-layout array seen in vgg-flax's layout (a view; see `convert.to_flax_layout`)."""
    if kind == "conv":  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if kind == "fc6":  # (out, C*7*7) in torch's flatten order -> a 7x7 conv kernel
        side = HEAD_INPUT_SIZE
        split = value.reshape(len(value), -1, side, side)  # a view if the rows split cleanly
        return split.transpose(2, 3, 1, 0)
    if kind == "fc":  # (out, in) -> a 1x1 conv kernel
        return value.T[None, None]
    return value


def _rows(value: np.ndarray) -> int:
    # Blocks of about _BLOCK elements along the first axis: no full-size temporaries.
    return max(1, _BLOCK * len(value) // max(value.size, 1))


def _extremes(name: str, blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> Difference:
    """max |a - b| and max |b| over (ours, theirs) blocks, in float64."""
    max_abs = scale = 0.0
    for a, b in blocks:
        if not b.size:
            continue
        d = np.subtract(a, b, dtype=np.float64)
        max_abs = max(max_abs, float(d.max()), -float(d.min()))
        scale = max(scale, float(b.max()), -float(b.min()))
    return Difference(name, max_abs, 0.0, scale)


def with_floor(differences: Iterable[Difference], fraction: float = FLOOR_FRACTION) -> list:
    """The same differences, each relative to at least `fraction` of the kind's largest scale."""
    differences = list(differences)
    floor = fraction * max((d.scale for d in differences), default=0.0)
    return [_relative(d, floor) for d in differences]


def _relative(d: Difference, floor: float) -> Difference:
    denominator = max(d.scale, floor)
    return dataclasses.replace(d, max_rel=d.max_abs / denominator if denominator else d.max_abs)


def torch_layout(variables: Mapping[str, Any], arch: str) -> Iterator[tuple[str, np.ndarray]]:
    """(torchvision key, array) for each tensor of `variables` present, one at a time.

    `to_torchvision` without holding every converted copy at once: a comparison of full-size
    VGGs converts fc6's 100M values one tensor after the other.
    """
    params, stats = variables.get("params", {}), variables.get("batch_stats", {})
    num_classes = int(np.shape(params["fc8"]["bias"])[0]) if "fc8" in params else 1000
    for entry in torchvision_entries(arch, num_classes):
        tree = params if entry.collection == "params" else stats
        if entry.name in tree.get(entry.layer, {}):
            yield entry.key, to_torch_layout(np.asarray(tree[entry.layer][entry.name]), entry.kind)


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


def _narrow_trunk(arch: str, width: float) -> Any:
    """torchvision's conv trunk of `arch` (make_layers) with vgg-flax's channels at `width`."""
    import torch
    import torchvision

    table1, batch_norm = resolve(arch)
    widths = {layer.name: layer.features for layer in layers(table1, width)}
    config = [
        "M" if layer.kind == "pool" else widths[layer.name]
        for layer in layers(table1)
        if layer.kind in ("conv", "pool")
    ]
    trunk = torchvision.models.vgg.make_layers(config, batch_norm=batch_norm)
    for module in trunk.modules():  # torchvision's VGG init (VGG.__init__ applies it)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
    return trunk


def torch_model(
    arch: str,
    state: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    head_width: int = HEAD_WIDTH,
    width: float = 1.0,
) -> Any:
    """torchvision's `arch` with `state` loaded strictly, or seeded random weights (`randomize`).

    `head_width` and `width` (random weights only) replace the 4096 units of fc6 and fc7 and
    scale every conv's channels as `create_model(..., width=)` does, initialised as torchvision
    initialises them: torchvision's own modules at the size of a narrow vgg-flax net.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    if state is None:
        model = torchvision.models.get_model(arch, weights=None)
        if width != 1.0:
            model.features = _narrow_trunk(arch, width)  # the head is rebuilt below for it
        if head_width != HEAD_WIDTH or width != 1.0:
            trunk_out = [m.out_channels for m in model.features if hasattr(m, "out_channels")][-1]
            widths = (trunk_out * HEAD_INPUT_SIZE**2, head_width, head_width, 1000)
            for index, (fan_in, fan_out) in zip((0, 3, 6), itertools.pairwise(widths), strict=True):
                layer = torch.nn.Linear(fan_in, fan_out)
                torch.nn.init.normal_(layer.weight, 0, 0.01)  # torchvision's VGG init
                torch.nn.init.zeros_(layer.bias)
                model.classifier[index] = layer
        randomize(model, seed)
    else:
        num_classes = int(np.shape(state["classifier.6.weight"])[0])
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        tensors = {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
        model.load_state_dict(tensors, strict=True)
    return model.eval()


def flax_layout(state: Mapping[str, Any], arch: str, dtype: Any = None) -> dict[str, Any]:
    """The inverse of `torch_layout`: `from_torchvision` with the head kept, at the widths of
    the net (`torch_model`'s narrow nets too)."""
    return from_torchvision(state, arch, head="keep", dtype=dtype)


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
    by up to ~1e-2 of their scale although the forward passes agree to 1e-6. Gradients are
    measured against the floor of `with_floor` (conv biases before BatchNorm get none).
    """
    check_train_bn(arch, train_bn)
    model, variables = _ours_of(arch, torch_net)
    num_classes = model.num_classes
    with float32_precision():
        theirs, their_stats = _forward_torch(arch, torch_net, images, train_bn)
        ours, our_stats = _forward_ours(model, variables, images, train_bn)
    activations = [difference(name, ours[name], theirs[name]) for name in theirs]
    agree = float(np.mean(ours["logits"].argmax(-1) == theirs["logits"].argmax(-1)))
    report = ParityReport(arch, activations, agree)
    if train_bn:
        mapped = dict(torch_layout({"params": variables["params"], "batch_stats": our_stats}, arch))
        report.running_stats = [
            difference(key, mapped[key], their_stats[key]) for key in their_stats
        ]
    del variables, ours, theirs  # the float32 copy is not needed for the gradients
    if grad:
        labels = np.random.default_rng(seed).integers(0, num_classes, len(images))
        report.gradients = gradient_differences(
            arch, torch_net, images, labels, train_bn=train_bn, dtype=grad_dtype
        )
    return report


def check_train_bn(arch: str, train_bn: bool) -> None:
    """Refuse BatchNorm's training mode for a torchvision `arch` that has no BatchNorm."""
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(
            f"unknown torchvision arch {arch!r}; choose one of {', '.join(TORCHVISION_ARCHS)}"
        )
    if train_bn and not TORCHVISION_ARCHS[arch][1]:
        raise ValueError(
            f"{arch} has no BatchNorm, so BatchNorm's training mode does not apply; drop "
            f"--train-bn (train_bn=True) or choose {arch}_bn"
        )


def _ours_of(arch: str, torch_net: Any, **options: Any) -> tuple[Any, dict[str, Any]]:
    """vgg-flax's `(model, variables)` of a torchvision net, at its widths, its shapes checked."""
    variables = from_torchvision(torch_net.state_dict(), arch, head="keep")
    fields = model_fields(arch, variables["params"])
    return create_model(arch, dropout_rate=0.0, **fields, **options), variables


def gradient_differences(
    arch: str,
    torch_net: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    train_bn: bool = False,
    dtype: str = "float64",
) -> list[Difference]:
    """Compare d(mean cross-entropy)/d(parameter) for every parameter, computed in `dtype`.

    Relative errors use `with_floor`: gradients that are zero by construction (conv biases
    before BatchNorm in training mode) are rounding noise on both sides.
    """
    import copy

    import torch

    if dtype not in ("float32", "float64"):
        raise ValueError(f"gradient dtype must be float32 or float64, not {dtype!r}")
    check_train_bn(arch, train_bn)
    # One side at a time, freeing as it goes. JAX first: its float64 parameters are made leaf by
    # leaf and become the gradients (donated). Then torch's float64 net, whose gradients are
    # compared as backward makes them and dropped at once, with JAX's of the same tensor.
    ours = _jax_gradients(arch, torch_net, images, labels, train_bn, dtype)
    entries = {e.key: e for e in torchvision_entries(arch) if e.collection == "params"}
    found: dict[str, Difference] = {}

    def compare_and_free(param: Any, key: str) -> None:
        entry = entries[key]
        grads = {"params": {entry.layer: {entry.name: ours[entry.layer].pop(entry.name)}}}
        found[key] = layout_differences(grads, arch, {key: param.grad.numpy()})[0]
        param.grad = None

    net = copy.deepcopy(torch_net).to(getattr(torch, dtype))  # leaves torch_net untouched
    _set_mode(net, train_bn)
    net.zero_grad(set_to_none=True)
    order = [key for key, _ in net.named_parameters()]
    for key, param in net.named_parameters():
        param.register_post_accumulate_grad_hook(functools.partial(compare_and_free, key=key))
    with float32_precision():
        logits = net(torch.from_numpy(images.astype(dtype)))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
    del net, logits
    return with_floor(found[key] for key in order)


def _jax_gradients(
    arch: str, torch_net: Any, images: np.ndarray, labels: np.ndarray, train_bn: bool, dtype: str
) -> dict[str, dict[str, Any]]:
    """vgg-flax's gradients of the mean cross-entropy in `dtype`, by layer and name."""
    import jax
    import jax.numpy as jnp
    import optax

    from vgg_flax.xla_options import compiler_options

    with float32_precision(), jax.enable_x64(dtype == "float64"):
        float_type = getattr(jnp, dtype)
        model, variables = _ours_of(arch, torch_net, dtype=float_type, param_dtype=float_type)
        for tree in variables.values():
            for layer in tree.values():
                for name in layer:  # replaced one by one: one float32 and one new copy at most
                    layer[name] = jnp.asarray(layer[name], float_type)
        x = jnp.asarray(images.transpose(0, 2, 3, 1).astype(dtype))
        stats = variables.get("batch_stats", {})

        def loss(params: Any) -> jax.Array:
            state = {"params": params, "batch_stats": stats}
            if train_bn:
                logits = model.apply(state, x, train=True, mutable=["batch_stats"])[0]
            else:
                logits = model.apply(state, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        # jit: differentiating op by op is several times slower than compiling the whole graph;
        # donating the parameters lets the gradients take their memory.
        grad_fn = jax.jit(jax.grad(loss), donate_argnums=0, compiler_options=compiler_options())
        grads = grad_fn(variables.pop("params"))
        return {layer: dict(tree) for layer, tree in grads.items()}


def store_linear_transposed(net: Any) -> None:
    """Store every Linear weight of torch `net` (in, out)-major, as vgg-flax stores its kernels.

    The same values in the same modules, only their memory order changes: gradients and SGD's
    momentum buffers follow the weight's layout, so `layout_differences` compares them with
    vgg-flax's as views, without transposing fc6's 100M values.
    """
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight.detach().t().contiguous().t()
            module.weight = torch.nn.Parameter(weight, requires_grad=module.weight.requires_grad)


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
    # Only the buffers (running statistics) change in a train-mode pass: save those, not fc6.
    saved = {k: v.clone() for k, v in net.named_buffers()} if train_bn else None
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
            net.load_state_dict(saved, strict=False)  # the pass updated the running statistics
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
