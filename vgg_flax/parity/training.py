"""Training parity with PyTorch: the same start, the same batches, the same run, step by step.

vgg-flax runs its own training step (`make_train_step` over the device mesh, the optimiser of
`optim.make_optimizer(optim.schedule(...))`, plateau drops through `optim.record_evaluation`);
PyTorch runs a reference step written here: `torch.optim.SGD` with momentum, its
`weight_decay` on the parameters vgg-flax's L2 term covers ("all": one group; "kernels": decay
on conv and linear weights only), the learning rate of a `LambdaLR` (warm-up and step drops)
times the rate of a `ReduceLROnPlateau` fed the same evaluations. Both start from the same
torchvision weights (`parity.torch_model`) and get the same batches; dropout is off or uses the
same keep masks on both sides (`VGG(..., dropout_masks=...)`); BatchNorm trains with its
running statistics. After every step the cross-entropies, every parameter, momentum buffer and
running statistic are compared (`parity.layout_differences`, relative to `parity.with_floor`'s
floor); torch keeps its Linear weights (in, out)-major so that this needs no transposition.
Needs torch.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch  # before anything that might load TensorFlow

from vgg_flax.models.arch import HEAD_WIDTH
from vgg_flax.parity.torchvision import (
    Difference,
    check_train_bn,
    flax_layout,
    float32_precision,
    layout_differences,
    store_linear_transposed,
    torch_model,
    with_floor,
)
from vgg_flax.train import recipe

KINDS = ("params", "momentum", "stats")
# Where the two runs count as parted, per dtype: float64 agrees to rounding; float32 drifts.
THRESHOLDS = {"float64": 1e-9, "float32": 1e-4}
# torchvision's classifier: Dropout after relu6 and relu7.
_DROPOUTS = {"fc6": 2, "fc7": 5}


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """What both sides train on and with; `evaluations` are (after step, accuracy) pairs."""

    steps: int = 10
    batch: int = 8
    size: tuple[int, int] = (64, 64)
    dtype: str = "float64"
    learning_rate: float = 0.01
    momentum: float = recipe.MOMENTUM
    weight_decay: float = recipe.WEIGHT_DECAY
    l2_mask: str = "all"
    schedule: str = "step"
    factor: float = recipe.LR_FACTOR
    step_every: int = 5
    warmup_steps: int = 2
    evaluations: tuple[tuple[int, float], ...] = ()
    patience: int = 1
    max_drops: int = recipe.LR_MAX_DROPS
    dropout: float = 0.0
    devices: int = 1
    seed: int = 0
    head_width: int = HEAD_WIDTH  # fc6/fc7 units on both sides
    width: float = 1.0  # every conv's channels scaled on both sides (as create_model's width=)


@dataclasses.dataclass
class StepComparison:
    """One step: both cross-entropies and learning rates, the worst difference of each kind."""

    step: int
    loss_ours: float
    loss_torch: float
    lr_ours: float
    lr_torch: float
    worst: dict[str, Difference]

    @property
    def loss_rel(self) -> float:
        """|loss ours - loss torch| / |loss torch|."""
        return abs(self.loss_ours - self.loss_torch) / abs(self.loss_torch)


@dataclasses.dataclass
class TrainParityReport:
    """The outcome of `compare_training`; `parted`: (step, name, relative) or None."""

    arch: str
    setup: TrainSetup
    threshold: float
    steps: list[StepComparison]
    parted: tuple[int, str, float] | None
    final: list[Difference]

    def worst(self, kind: str) -> float:
        """The largest relative difference of `kind` ("loss" or one of KINDS) over all steps."""
        if kind == "loss":
            return max(s.loss_rel for s in self.steps)
        return max((s.worst[kind].max_rel for s in self.steps if kind in s.worst), default=0.0)


def compare_training(
    arch: str, setup: TrainSetup = TrainSetup(), *, threshold: float | None = None
) -> TrainParityReport:
    """Train torchvision's `arch` and its vgg-flax conversion side by side; compare every step.

    `threshold` (default `THRESHOLDS[setup.dtype]`) decides where the runs part: the first step
    whose loss or any tensor (in network order) differs by more than it, relatively.
    """
    import jax

    _check(arch, setup)
    threshold = THRESHOLDS[setup.dtype] if threshold is None else threshold
    net = torch_model(arch, seed=setup.seed, head_width=setup.head_width, width=setup.width)
    net = net.to(getattr(torch, setup.dtype))
    steps, parted, final = [], None, []
    with float32_precision(), jax.enable_x64(setup.dtype == "float64"):
        ours = _FlaxRun(arch, net, setup)
        theirs = _TorchRun(net, setup)
        for index, batch in enumerate(_batches(setup, ours.model.head_width)):
            loss_torch, lr_torch = theirs.step(index, batch)
            loss_ours, lr_ours = ours.step(index, batch)
            diffs = {
                kind: with_floor(layout_differences(ours.tensors(kind), arch, theirs.tensors(kind)))
                for kind in KINDS
            }
            diffs = {kind: rows for kind, rows in diffs.items() if rows}
            row = StepComparison(
                index + 1,
                loss_ours,
                loss_torch,
                lr_ours,
                lr_torch,
                {kind: max(rows, key=lambda d: d.max_rel) for kind, rows in diffs.items()},
            )
            steps.append(row)
            if parted is None:
                parted = _first_parting(row, diffs, threshold)
            final = [d for rows in diffs.values() for d in rows]
        del ours, theirs
    gc.collect()  # torch's optimiser and schedulers hold each other: free the nets now
    return TrainParityReport(arch, setup, threshold, steps, parted, final)


def format_report(report: TrainParityReport) -> str:
    """The per-step table, the worst tensors at the end and where (if anywhere) the runs part."""
    setup = report.setup
    lines = [
        f"{report.arch}: {setup.steps} training steps, batch {setup.batch} of "
        f"{setup.size[0]}x{setup.size[1]}, {setup.dtype}, {setup.devices} device(s) for vgg-flax, "
        f"{'' if setup.head_width == HEAD_WIDTH else f'head width {setup.head_width}, '}"
        f"{'' if setup.width == 1.0 else f'width {setup.width:g}, '}"
        f"{f'dropout {setup.dropout:g} (the same masks)' if setup.dropout else 'no dropout'}, "
        f"schedule {setup.schedule}, "
        f"l2 {setup.l2_mask} {setup.weight_decay:g}, momentum {setup.momentum:g}",
        f"{'step':>4} {'lr':>10} {'loss vgg-flax':>18} {'loss torch':>18} {'loss rel':>9} "
        + " ".join(f"{kind + ' rel':>14}" for kind in KINDS),
    ]
    for s in report.steps:
        worst = " ".join(
            f"{s.worst[kind].max_rel:14.2e}" if kind in s.worst else f"{'-':>14}" for kind in KINDS
        )
        lines.append(
            f"{s.step:4d} {s.lr_torch:10.3e} {s.loss_ours:18.12f} {s.loss_torch:18.12f} "
            f"{s.loss_rel:9.2e} {worst}"
        )
    lines.append(f"after step {report.steps[-1].step}, worst tensors:")
    for d in sorted(report.final, key=lambda d: -d.max_rel)[:5]:
        lines.append(f"  {d.name:<32} max |diff| {d.max_abs:.3e}  relative {d.max_rel:.3e}")
    if report.parted is None:
        lines.append(f"agree within {report.threshold:g} (relative) at every step")
    else:
        step, name, rel = report.parted
        lines.append(f"part at step {step}: {name} differs by {rel:.3e} > {report.threshold:g}")
    return "\n".join(lines)


def _check(arch: str, setup: TrainSetup) -> None:
    from vgg_flax.train import optim

    check_train_bn(arch, False)
    if setup.dtype not in THRESHOLDS:
        raise ValueError(f"dtype must be float64 or float32, not {setup.dtype!r}")
    if setup.steps < 1 or setup.batch < 2:
        raise ValueError("need at least 1 step and a batch of at least 2 (BatchNorm's variance)")
    if setup.head_width < 1:
        raise ValueError(f"head width must be at least 1, got {setup.head_width}")
    if not setup.width > 0:
        raise ValueError(f"width must be positive, got {setup.width}")
    if setup.batch % setup.devices:
        raise ValueError(f"batch {setup.batch} does not split over {setup.devices} devices")
    if setup.evaluations and setup.schedule != "plateau":
        raise ValueError("evaluations move the learning rate only with schedule 'plateau'")
    if not 0.0 <= setup.dropout < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {setup.dropout}")
    optim.l2_mask({}, setup.l2_mask)  # the one check of the mask's name
    optim.schedule(setup.schedule, base=setup.learning_rate, step_every=setup.step_every)


def _batches(setup: TrainSetup, head_width: int) -> Iterator[dict[str, Any]]:
    """The same arrays for both sides: NCHW images, labels, fc6/fc7 keep masks."""
    generator = torch.Generator().manual_seed(setup.seed)
    rng = np.random.default_rng(setup.seed)
    for _ in range(setup.steps):
        images = torch.randn(setup.batch, 3, *setup.size, generator=generator).numpy()
        batch = {
            "image": images.astype(setup.dtype),
            "label": rng.integers(0, 1000, setup.batch).astype(np.int32),
        }
        if setup.dropout:
            shape = (setup.batch, head_width)
            batch["dropout_masks"] = {k: rng.random(shape) >= setup.dropout for k in _DROPOUTS}
        yield batch


def _first_parting(
    row: StepComparison, diffs: dict[str, list[Difference]], threshold: float
) -> tuple[int, str, float] | None:
    if row.loss_rel > threshold:
        return row.step, "loss", row.loss_rel
    ordered = sorted((d for rows in diffs.values() for d in rows), key=lambda d: _order(d.name))
    for d in ordered:
        if d.max_rel > threshold:
            return row.step, d.name, d.max_rel
    return None


def _order(key: str) -> tuple[int, int, str]:
    # torchvision keys in network order: features before classifier, then by module index.
    part, index, rest = key.split(".", 2)
    return (part != "features", int(index), rest)


class _FlaxRun:
    """vgg-flax's side: the trainer's own step, optimiser and plateau rule over the mesh."""

    def __init__(self, arch: str, net: Any, setup: TrainSetup) -> None:
        import functools

        import jax
        import jax.numpy as jnp

        from vgg_flax.models.vgg import create_model
        from vgg_flax.parallel import make_mesh
        from vgg_flax.train import optim
        from vgg_flax.train.step import create_state, make_train_step

        available = jax.devices()
        if len(available) < setup.devices:
            raise ValueError(
                f"{setup.devices} devices asked for, {len(available)} present; simulate CPU "
                f"devices with XLA_FLAGS=--xla_force_host_platform_device_count={setup.devices}"
            )
        dtype = getattr(jnp, setup.dtype)
        variables = flax_layout(net.state_dict(), arch, dtype)
        self.model = create_model(
            arch,
            num_classes=len(variables["params"]["fc8"]["bias"]),
            head_width=setup.head_width,
            width=setup.width,
            dropout_rate=setup.dropout,
            dtype=dtype,
            param_dtype=dtype,
        )
        self.mesh = make_mesh(available[: setup.devices])
        tx = optim.make_optimizer(
            optim.schedule(
                setup.schedule,
                base=setup.learning_rate,
                factor=setup.factor,
                step_every=setup.step_every,
                warmup_steps=setup.warmup_steps,
            ),
            momentum=setup.momentum,
        )
        self.state = create_state(variables, jax.random.key(setup.seed), self.mesh, tx)
        del variables
        self.train_step = make_train_step(
            self.model, self.mesh, tx, weight_decay=setup.weight_decay, l2_mask=setup.l2_mask
        )
        self.record: Callable[[Any, float], Any] = jax.jit(
            functools.partial(
                optim.record_evaluation,
                patience=setup.patience,
                factor=setup.factor,
                max_drops=setup.max_drops,
            )
        )
        self.evaluations = dict(setup.evaluations)

    def step(self, index: int, batch: dict[str, Any]) -> tuple[float, float]:
        """One training step (then the evaluation after it, if any): (cross-entropy, lr)."""
        from vgg_flax.parallel import to_global

        ours = {**batch, "image": batch["image"].transpose(0, 2, 3, 1)}
        self.state, metrics = self.train_step(self.state, to_global(ours, self.mesh))
        if index + 1 in self.evaluations:
            opt_state = self.record(self.state["opt_state"], self.evaluations[index + 1])
            self.state = {**self.state, "opt_state": opt_state}
        return float(metrics["cross_entropy"]), float(metrics["learning_rate"])

    def tensors(self, kind: str) -> dict[str, Any]:
        """Flax variables of the parameters, the momentum buffers or the running statistics."""
        if kind == "params":
            return {"params": self.state["params"]}
        if kind == "momentum":
            return {"params": self.state["opt_state"][0].trace}
        return {"batch_stats": self.state["batch_stats"]}


class _TorchRun:
    """PyTorch's reference: SGD with momentum and weight decay, LambdaLR x ReduceLROnPlateau."""

    def __init__(self, net: Any, setup: TrainSetup) -> None:
        self.net, self.setup = net, setup
        self.masks: dict[str, _SuppliedDropout] = {}
        for name, index in _DROPOUTS.items():
            module = _SuppliedDropout(setup.dropout) if setup.dropout else torch.nn.Identity()
            net.classifier[index] = module
            self.masks[name] = module
        net.train()  # BatchNorm with batch statistics, updating its running ones
        store_linear_transposed(net)  # compared as views, see layout_differences
        named = list(net.named_parameters())
        if setup.l2_mask == "all":
            groups = [{"params": [p for _, p in named], "weight_decay": setup.weight_decay}]
        else:  # "kernels": conv and linear weights decay; biases and BatchNorm's affine do not
            groups = [
                {"params": [p for _, p in named if p.ndim > 1], "weight_decay": setup.weight_decay},
                {"params": [p for _, p in named if p.ndim == 1], "weight_decay": 0.0},
            ]
        self.optimizer = torch.optim.SGD(groups, lr=setup.learning_rate, momentum=setup.momentum)
        # The plateau rule on a stand-in optimiser whose lr (from 1.0) is the plateau's scale.
        # vgg-flax drops once `patience` evaluations bring no gain, torch once more than
        # `patience` do; `min_lr` stops it after max_drops drops.
        self.stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.stand_in,
            mode="max",
            factor=setup.factor,
            patience=setup.patience - 1,
            threshold=0.0,
            threshold_mode="abs",
            min_lr=setup.factor**setup.max_drops,
            eps=0.0,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)
        self.evaluations = dict(setup.evaluations)
        self.params = dict(named)

    def _factor(self, step: int) -> float:
        setup, factor = self.setup, 1.0
        if setup.schedule == "step":
            factor *= setup.factor ** (step // setup.step_every)
        if setup.warmup_steps:
            factor *= min(1.0, (step + 1) / setup.warmup_steps)
        return factor * self.stand_in.param_groups[0]["lr"]

    def step(self, index: int, batch: dict[str, Any]) -> tuple[float, float]:
        """One reference step (then the evaluation after it, if any): (cross-entropy, lr)."""
        for name, module in self.masks.items():
            if isinstance(module, _SuppliedDropout):
                module.keep = torch.from_numpy(batch["dropout_masks"][name])
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.net(torch.from_numpy(batch["image"]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["label"]).long())
        loss.backward()
        self.optimizer.step()
        if index + 1 in self.evaluations:
            self.plateau.step(self.evaluations[index + 1])
        self.scheduler.step()  # after the plateau: the next rate includes its scale
        return float(loss.detach()), lr

    def tensors(self, kind: str) -> dict[str, Any]:
        """torchvision key -> numpy array of every parameter, momentum buffer or statistic."""
        if kind == "params":
            return {k: p.detach().numpy() for k, p in self.params.items()}
        if kind == "momentum":
            state = self.optimizer.state
            return {k: state[p]["momentum_buffer"].numpy() for k, p in self.params.items()}
        return {k: v.numpy() for k, v in self.net.state_dict().items() if ".running_" in k}


class _SuppliedDropout(torch.nn.Module):
    """Dropout with a given keep mask, as torch's: x * keep / (1 - rate)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate
        self.keep: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep.to(x.dtype) / (1.0 - self.rate)
