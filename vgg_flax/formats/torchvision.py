"""torchvision's VGG state dicts to vgg-flax variables and back, mapped by name.

torchvision's `make_layers` builds `features` as, for each entry of the layer list, a conv
followed by [BatchNorm,] ReLU, and one MaxPool per "M"; its classifier is Linear (0), ReLU,
Dropout, Linear (3), ReLU, Dropout, Linear (6). `arch.layers` names the same entries, so the
index of every `features.{i}` follows from the config and never from the order of a file's keys.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from vgg_flax.formats.pth import load_pth
from vgg_flax.models import arch as arch_lib
from vgg_flax.weights.atomic import atomic_write

HEAD_OPTIONS = ("auto", "keep", "drop")
_BN_TORCH = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_OLD_CLASSIFIER = {"1": "0", "4": "3"}
# torchvision's classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear.
_CLASSIFIER = {0: "fc6", 1: "relu6", 3: "fc7", 4: "relu7", 6: "logits"}
_HEAD = {
    "fc6": "fc6",
    "fc7": "fc7",
    "logits": "fc8",
}  # activation -> parameter layer  # pre-0.2 torchvision: Dropout came before each Linear


class UnusableHeadWarning(UserWarning):
    """The checkpoint's classifier holds NaN/inf; only its conv features were loaded."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One torch tensor: its key, shape, and where it lives in the Flax variables."""

    key: str
    shape: tuple[int, ...]
    collection: str  # "params" or "batch_stats"
    layer: str
    name: str
    kind: str  # "conv", "fc6", "fc" or "vector"


def torchvision_modules(arch: str) -> dict[str, str]:
    """torchvision's module path -> vgg-flax activation name, for every layer of `arch`.

    torchvision's features hold one module per activation of `arch_lib.activation_names`
    (conv, [bn,] relu, ..., pool), in the same order; the classifier's Dropouts have no name.
    """
    config, batch_norm = _resolve(arch)
    names = arch_lib.activation_names(config, batch_norm)
    trunk = names[: names.index("fc6")]
    modules = {f"features.{index}": name for index, name in enumerate(trunk)}
    return modules | {f"classifier.{index}": name for index, name in _CLASSIFIER.items()}


def torchvision_entries(
    arch: str,
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    head_width: int = arch_lib.HEAD_WIDTH,
) -> tuple[_Entry, ...]:
    """Every tensor of torchvision's `arch` state dict (without num_batches_tracked), in order.

    `width` and `head_width` are `create_model`'s: torchvision's modules at a narrow net's sizes.
    """
    config, _ = _resolve(arch)
    convs = {layer.name: layer for layer in arch_lib.layers(config, width)}
    entries: list[_Entry] = []
    channels = 3
    for path, name in torchvision_modules(arch).items():
        if name in convs and convs[name].kind == "conv":
            out, k = convs[name].features, convs[name].kernel
            shape = (out, channels, k, k)
            entries.append(_Entry(f"{path}.weight", shape, "params", name, "kernel", "conv"))
            entries.append(_Entry(f"{path}.bias", (out,), "params", name, "bias", "vector"))
            channels = out
        elif name.startswith("bn"):
            for torch_name, ours in _BN_TORCH.items():
                collection = "params" if torch_name in ("weight", "bias") else "batch_stats"
                key = f"{path}.{torch_name}"
                entries.append(_Entry(key, (channels,), collection, name, ours, "vector"))
        elif name in _HEAD:
            layer, fan_out = _HEAD[name], head_width if name != "logits" else num_classes
            fan_in = channels * (arch_lib.HEAD_INPUT_SIZE**2 if layer == "fc6" else 1)
            kind = "fc6" if layer == "fc6" else "fc"
            shape = (fan_out, fan_in)
            entries.append(_Entry(f"{path}.weight", shape, "params", layer, "kernel", kind))
            entries.append(_Entry(f"{path}.bias", (fan_out,), "params", layer, "bias", "vector"))
            channels = fan_out
    return tuple(entries)


def _resolve(arch: str) -> tuple[str, bool]:
    if arch not in arch_lib.TORCHVISION_ARCHS:
        known = ", ".join(arch_lib.TORCHVISION_ARCHS)
        raise ValueError(f"unknown torchvision arch {arch!r}; choose one of {known}")
    return arch_lib.TORCHVISION_ARCHS[arch]


def from_torchvision(
    source: str | os.PathLike | Mapping[str, Any],
    arch: str | None = None,
    *,
    head: str = "auto",
    dtype: Any = None,
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Convert torchvision's `arch` weights (a .pth path or a name -> array mapping) to variables.

    `arch` (e.g. "vgg16_bn") defaults to the one architecture whose tensor shapes the weights
    have (`infer_arch`); `vgg_flax.load` also builds the model. Returns `{"params": ...,
    "batch_stats": ...}` (numpy arrays) for `create_model(arch, num_classes=...)`, num_classes
    read from the last Linear layer. Accepts a "module."
    prefix (DataParallel) and the old classifier numbering 1/4/6; ignores num_batches_tracked.
    `head`: "keep" loads fc6-fc8 and fails if they hold NaN/inf; "drop" leaves them out (use the
    model with `features=...` up to pool5); "auto" (default) keeps a finite head and drops an
    unusable one with an `UnusableHeadWarning`. `dtype`: cast every array (default: as stored).
    """
    if head not in HEAD_OPTIONS:
        raise ValueError(f"unknown head option {head!r}; choose one of {', '.join(HEAD_OPTIONS)}")
    # A file is mapped, not read: every tensor is copied once into its new layout anyway.
    loaded = load_pth(source, mmap=True) if isinstance(source, str | os.PathLike) else source
    state = _normalise(loaded)
    del loaded
    arch = arch or infer_arch(state)
    entries = _entries_of(state, arch)
    _check(state, entries, arch)
    _check_values(state, entries)
    if head != "drop" and not _head_is_finite(state, entries):
        message = (
            f"the classifier (fc6-fc8) of these {arch} weights holds NaN or inf, so its head is "
            "unusable (torchvision's features-only file vgg16_features-amdegroot is such a file)"
        )
        if head == "keep":
            raise ValueError(f"{message}; pass head='drop' to load the conv features only")
        warnings.warn(
            f"{message}; loaded the conv features only: use model.apply(..., "
            "features=('pool5',)) or train a new head",
            UnusableHeadWarning,
            stacklevel=2,
        )
        head = "drop"
    variables: dict[str, dict[str, dict[str, np.ndarray]]] = {"params": {}}
    for entry in entries:
        if head == "drop" and entry.layer.startswith("fc"):
            continue
        value = to_flax_layout(state.pop(entry.key), entry.kind)  # pop: free each source early
        value = value if dtype is None else value.astype(dtype)
        variables.setdefault(entry.collection, {}).setdefault(entry.layer, {})[entry.name] = value
    return variables


def to_torchvision(
    variables: Mapping[str, Any], arch: str, *, num_batches_tracked: int | None = None
) -> dict[str, np.ndarray]:
    """torchvision's state dict for `arch` from vgg-flax variables; loads with strict=True.

    Arrays keep their dtype; the inverse of `from_torchvision`, bit for bit. BatchNorm's
    num_batches_tracked is left out (as in torchvision's own weight files) unless given.
    """
    params = variables.get("params", {})
    stats = variables.get("batch_stats", {})
    if "fc8" not in params:
        raise ValueError(
            "these variables have no fc8 (a features-only conversion?); torchvision's VGG needs "
            "the whole classifier"
        )
    entries = torchvision_entries(arch, **model_fields(arch, params))
    state: dict[str, np.ndarray] = {}
    missing, wrong = [], []
    for entry in entries:
        tree = params if entry.collection == "params" else stats
        try:
            value = np.asarray(tree[entry.layer][entry.name])
        except KeyError:
            missing.append(f"{entry.collection}/{entry.layer}/{entry.name}")
            continue
        value = to_torch_layout(value, entry.kind)
        if value.shape != entry.shape:
            wrong.append(f"{entry.layer}/{entry.name}: {value.shape} != {entry.shape}")
            continue
        state[entry.key] = value
        if num_batches_tracked is not None and entry.key.endswith(".running_var"):
            counter = entry.key[: -len("running_var")] + "num_batches_tracked"
            state[counter] = np.asarray(num_batches_tracked, np.int64)
    if missing or wrong:
        raise ValueError(
            f"variables do not fit torchvision's {arch}: missing {missing or 'none'}; "
            f"wrong shapes {wrong or 'none'}"
        )
    return state


def save_pth(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a state dict (e.g. `to_torchvision`'s) as a .pth file with torch.save, atomically."""
    try:
        import torch
    except ImportError as error:
        raise ValueError("save_pth needs torch: pip install 'vgg-flax[torch]'") from error
    path = os.fspath(path)
    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}
    with atomic_write(path) as file:
        torch.save(tensors, file)


def _normalise(source: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Names without a DataParallel prefix, classifier renumbered, values as numpy arrays."""
    state = {}
    for key, value in source.items():
        key = key.removeprefix("module.")
        if key.endswith("num_batches_tracked"):
            continue
        state[key] = _as_numpy(value)
    if "classifier.1.weight" in state and "classifier.0.weight" not in state:
        state = {_renumber(key): value for key, value in state.items()}
    return state


def _renumber(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "classifier" and len(parts) == 3:
        parts[1] = _OLD_CLASSIFIER.get(parts[1], parts[1])
    return ".".join(parts)


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor; torch is imported already if we have one
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch

            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def model_fields(arch: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """`create_model`'s `num_classes` (and `width`, `head_width` where not torchvision's) of
    vgg-flax `params` converted from torchvision's `arch` (a features-only set: 1000 classes)."""
    fields = arch_lib.widths_of(_resolve(arch)[0], params)
    fields["num_classes"] = int(np.shape(params["fc8"]["bias"])[0]) if "fc8" in params else 1000
    return fields


def _entries_of(state: Mapping[str, np.ndarray], arch: str) -> tuple[_Entry, ...]:
    """`arch`'s entries at the sizes `state` has: a narrow net's tensors are checked at its own
    width (read from its biases, whose shape is the same in both layouts), every one of them."""
    biases: dict[str, dict[str, np.ndarray]] = {}
    for entry in torchvision_entries(arch):
        value = state.get(entry.key) if entry.collection == "params" else None
        if entry.name == "bias" and value is not None and np.ndim(value) == 1 and np.size(value):
            biases[entry.layer] = {"bias": value}  # others: left to _check's message
    return torchvision_entries(arch, **model_fields(arch, biases))


def _check(state: Mapping[str, np.ndarray], entries: tuple[_Entry, ...], arch: str) -> None:
    expected = {entry.key: entry.shape for entry in entries}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [
        f"{key}: {tuple(state[key].shape)} != {shape}"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    if not (missing or unexpected or wrong):
        return
    guess = _guess_arch(state)
    hint = f" These weights look like {guess}, not {arch}." if guess and guess != arch else ""
    raise ValueError(
        f"the weights do not fit torchvision's {arch}.{hint} Missing keys: {missing or 'none'}; "
        f"unexpected keys: {unexpected or 'none'}; shape mismatches: {wrong or 'none'}"
    )


def _guess_arch(state: Mapping[str, np.ndarray]) -> str | None:
    shapes = {key: tuple(np.shape(value)) for key, value in state.items()}
    for arch in arch_lib.TORCHVISION_ARCHS:
        if shapes == {entry.key: entry.shape for entry in _entries_of(state, arch)}:
            return arch
    return None


def infer_arch(state: Mapping[str, Any]) -> str:
    """The torchvision architecture whose state dict has exactly these keys and shapes."""
    found = _guess_arch(_normalise(state))
    if found is None:
        known = ", ".join(arch_lib.TORCHVISION_ARCHS)
        raise ValueError(
            f"these weights fit none of torchvision's VGGs ({known}) by their tensor shapes; "
            "pass the architecture explicitly to see which tensors differ"
        )
    return found


def _check_values(state: Mapping[str, np.ndarray], entries: tuple[_Entry, ...]) -> None:
    """Weights must be floating point, and the conv trunk finite (the head is checked apart)."""
    integer = [e.key for e in entries if state[e.key].dtype.kind in "biu"]  # bfloat16 is "V"
    if integer:
        raise ValueError(
            f"weights {integer[:5]} are stored as integers ({state[integer[0]].dtype}), not "
            "floating point: this is not a trained float checkpoint; re-save it in float32"
        )
    broken = [
        e.key
        for e in entries
        if not e.layer.startswith("fc") and not np.isfinite(state[e.key]).all()
    ]
    if broken:
        raise ValueError(
            f"weights {broken[:5]} hold NaN or inf: the checkpoint is damaged or diverged; "
            "use another copy of the weights"
        )


def _head_is_finite(state: Mapping[str, np.ndarray], entries: tuple[_Entry, ...]) -> bool:
    return all(
        np.isfinite(state[entry.key]).all() for entry in entries if entry.layer.startswith("fc")
    )


def to_flax_layout(value: np.ndarray, kind: str) -> np.ndarray:
    """One torch tensor in vgg-flax's layout; `kind` is "conv", "fc6", "fc" or "vector"."""
    if kind == "vector":
        return np.array(value)
    # conv: OIHW -> HWIO; fc6: (out, C*7*7) in torch's flatten order -> a 7x7 conv kernel (HWIO);
    # fc7/fc8: (out, in) -> a 1x1 conv kernel. All three reverse the axes of (O, I, H*W).
    side = value.shape[-1] if kind == "conv" else arch_lib.HEAD_INPUT_SIZE if kind == "fc6" else 1
    out, fan_in = value.shape[0], value.size // (value.shape[0] * side * side)
    hwio = _reverse_axes(value.reshape(out, fan_in, side * side))
    return hwio.reshape(side, side, fan_in, out)


def to_torch_layout(value: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of `to_flax_layout`: one vgg-flax array in torch's layout."""
    if kind == "vector":
        return np.array(value)
    side, _, fan_in, out = value.shape
    oihw = _reverse_axes(value.reshape(side * side, fan_in, out))
    return oihw.reshape(out, fan_in, side, side) if kind == "conv" else oihw.reshape(out, -1)


def _reverse_axes(x: np.ndarray, rows: int = 16, cols: int = 64) -> np.ndarray:
    """`x.transpose(2, 1, 0)` as a new C-contiguous array, copied block by block.

    numpy's plain copy of a transposed view strides through memory and is several times slower
    on fc6's 400 MB; small blocks keep both sides of each copy in cache (benchmarks/convert.py).
    """
    out = np.empty(x.shape[::-1], x.dtype)
    for i in range(0, x.shape[0], rows):
        for j in range(0, x.shape[1], cols):
            out[:, j : j + cols, i : i + rows] = x[i : i + rows, j : j + cols].transpose(2, 1, 0)
    return out
