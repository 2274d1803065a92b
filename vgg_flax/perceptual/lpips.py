"""LPIPS (Zhang et al., CVPR 2018), VGG variant, versions 0.1 and 0.0, exact to the `lpips` package.

Inputs are NHWC RGB images in [-1, 1] (`normalize=True` takes [0, 1], as the original's flag).
For each image of a pair: v0.1 applies the original's scaling layer `(x - SHIFT) / SCALE`
(`vgg_flax.preprocessing.PRESETS["lpips"]`; v0.0 feeds the images unscaled: the original
release's bug, kept for its heads). A trunk whose usage record asks for other preprocessing (a
Keras or Caffe trunk: BGR, 0-255, minus the mean pixel) gets that instead, in both versions; the
VGG16 trunk gives relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; each is unit-normalised over channels
(`x / (sqrt(sum x^2) + 1e-10)`); the squared difference of the pair goes through the layer's 1x1
linear head (no bias; the original's dropout acts only in training). Each layer's map is averaged
over space, or with `spatial=True` upsampled to the input size (bilinear, align_corners=False,
as `nn.Upsample`), and the layers are summed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vgg_flax.models.vgg import VGG
from vgg_flax.perceptual import frozen
from vgg_flax.perceptual.lpips_heads import HEAD_CHANNELS, load_heads
from vgg_flax.preprocessing import LPIPS_SCALE, LPIPS_SHIFT, PRESETS, Preset, preprocess

# The original's ScalingLayer: ImageNet's mean and std mapped to inputs in [-1, 1].
SHIFT, SCALE = LPIPS_SHIFT, LPIPS_SCALE
# v0.0's input: the [-1, 1] images unchanged (the first release's missing scaling layer).
UNSCALED = Preset("lpips-v0.0", "RGB", (-1.0, 1.0), (0.0, 0.0, 0.0), resize=None, crop=None)
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
EPS = 1e-10  # lpips.normalize_tensor's


@struct.dataclass
class LPIPS:
    """The LPIPS metric with its trunk and heads; a pytree, so it can be passed through `jit`.

    Call it as `metric(x0, x1, spatial=False, per_layer=False, normalize=False)`: NHWC images
    of equal size (batches of equal size, or one of size 1 to broadcast). Returns the distance
    per pair, shape (N,), or with `spatial=True` the map (N, H, W); with `per_layer=True` a pair
    `(total, (layer0, ..., layer4))` of such arrays. The trunk gets no gradient; images do.
    """

    variables: Any
    heads: tuple[jax.Array, ...]
    model: VGG = struct.field(pytree_node=False)
    version: str = struct.field(pytree_node=False, default="0.1")
    preprocessing: Preset = struct.field(pytree_node=False, default=PRESETS["lpips"])
    dtype: Any = struct.field(pytree_node=False, default=None)
    remat: bool = struct.field(pytree_node=False, default=False)

    def __call__(
        self,
        x0: jax.Array,
        x1: jax.Array,
        *,
        spatial: bool = False,
        per_layer: bool = False,
        normalize: bool = False,
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
        """The LPIPS distance between `x0` and `x1`; see the class docstring."""
        return _lpips(self, jnp.asarray(x0), jnp.asarray(x1), spatial, per_layer, normalize)


def load_lpips(
    version: str = "0.1",
    *,
    trunk: str | os.PathLike | Mapping[str, Any] | frozen.Trunk | None = None,
    heads: str | os.PathLike | Mapping[str, Any] | None = None,
    cache: str | os.PathLike | None = None,
    dtype: Any = None,
    remat: bool = False,
) -> LPIPS:
    """The VGG LPIPS metric of `version` ("0.1" or "0.0").

    `trunk`: torchvision's vgg16 weights by default (`vgg_flax.pretrained`), a registry name
    (e.g. "vgg16_caffe"), any source `vgg_flax.load` takes, what it returns, or a `(model,
    variables)` pair; its usage record sets the input preprocessing (module docstring).
    `heads`: a head file or state dict; by default the published file for `version`
    (`vgg_flax.perceptual.lpips_heads.find_heads`). `dtype` (e.g. jnp.bfloat16) is the trunk's
    compute dtype; normalisation and heads stay float32.
    `remat` recomputes the trunk in the backward pass to save memory.
    """
    weights = load_heads(version, heads, cache=cache)
    model, variables, usage = frozen.resolve_trunk(trunk, "vgg16")
    frozen.check_taps(model, TAPS)
    version = version.removeprefix("v")
    torchvision = PRESETS["torchvision"]
    fed_like_torchvision = _values(usage.preprocessing) == _values(torchvision)
    if fed_like_torchvision:  # the heads' own trunk: the original's scaling (or v0.0's none)
        preset = PRESETS["lpips"] if version == "0.1" else UNSCALED
    else:
        preset = usage.preprocessing
    channels = tap_channels(model, variables)
    if channels != HEAD_CHANNELS:
        raise ValueError(
            f"the trunk's {', '.join(TAPS)} have {channels} channels but LPIPS's VGG heads take "
            f"{HEAD_CHANNELS}: LPIPS needs a full-width VGG-16 (D) trunk"
        )
    heads_arrays = tuple(jnp.asarray(w) for w in weights)
    return LPIPS(variables, heads_arrays, model, version, preset, dtype, remat)


def _values(preset: Preset) -> tuple[Any, ...]:
    return (preset.channel_order, preset.value_range, preset.mean, preset.std)


def trunk_from_lpips(state: Mapping[str, Any]) -> frozen.Trunk:
    """`(model, variables)` of the VGG16 trunk in an `lpips.LPIPS(net="vgg")` state dict.

    Its `net.slice{k}.{i}` modules are torchvision's `features.{i}` cut into slices, so the keys
    map back by index and go through `vgg_flax.load` (the classifier it expects is never read).
    """
    from vgg_flax.formats.torchvision import torchvision_entries
    from vgg_flax.weights.loading import load

    trunk = {
        "features." + key.split(".", 2)[2]: value
        for key, value in state.items()
        if key.startswith("net.slice")
    }
    if not trunk:
        raise ValueError("no net.slice* keys: not the state dict of an lpips.LPIPS(net='vgg')")
    for entry in torchvision_entries("vgg16"):
        if entry.key.startswith("classifier"):  # np.zeros: pages never touched, never read
            trunk[entry.key] = np.zeros(entry.shape, np.float32)
    return load(trunk, "vgg16", head="drop")[:2]


def tap_channels(model: VGG, variables: Any, taps: tuple[str, ...] = TAPS) -> tuple[int, ...]:
    """The channels of the trunk's activations `taps`, from shapes alone (nothing is computed)."""
    shapes = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, 32, 32, 3)), features=taps), variables
    )
    return tuple(int(shapes[name].shape[-1]) for name in taps)


def unit_normalise(features: jax.Array) -> jax.Array:
    """Each position's channel vector divided by (its L2 norm + 1e-10), as the original."""
    norm = jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True))
    return features / (norm + EPS)


def upsample_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of PyTorch's bilinear resize along one axis (no corners).

    Source position `(i + 0.5) * size_in / size_out - 0.5`, clamped at 0, interpolated between
    its floor and the next pixel (the last one repeated), as `nn.Upsample(mode="bilinear",
    align_corners=False)` computes it, in float32.
    """
    scale = np.float32(size_in) / np.float32(size_out)
    source = np.maximum(scale * (np.arange(size_out, dtype=np.float32) + 0.5) - 0.5, 0)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    frac = (source - low).astype(np.float32)
    matrix = np.zeros((size_out, size_in), np.float32)
    np.add.at(matrix, (np.arange(size_out), low), 1 - frac)
    np.add.at(matrix, (np.arange(size_out), high), frac)
    return matrix


def _upsample(maps: jax.Array, height: int, width: int) -> jax.Array:
    rows = upsample_matrix(maps.shape[1], height)
    cols = upsample_matrix(maps.shape[2], width)
    return jnp.einsum("oh,nhw,pw->nop", rows, maps, cols, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _lpips(
    metric: LPIPS, x0: jax.Array, x1: jax.Array, spatial: bool, per_layer: bool, normalize: bool
) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
    if x0.ndim != 4 or x0.shape[1:] != x1.shape[1:] or x0.shape[-1] != 3:
        raise ValueError(
            f"LPIPS takes two NHWC batches of RGB images of one size, got {x0.shape} and {x1.shape}"
        )
    if normalize:  # [0, 1] -> [-1, 1]
        x0, x1 = 2 * x0 - 1, 2 * x1 - 1
    x0, x1 = (
        preprocess(x.astype(jnp.float32), metric.preprocessing, input_range=(-1.0, 1.0))
        for x in (x0, x1)
    )

    def features(images: jax.Array) -> dict[str, jax.Array]:
        return frozen.activations(
            metric.model, metric.variables, images, TAPS, dtype=metric.dtype, remat=metric.remat
        )

    if x0.shape == x1.shape:  # one trunk run over both batches
        both = features(jnp.concatenate([x0, x1]).astype(jnp.float32))
        pairs = [jnp.split(both[name], 2) for name in TAPS]
    else:
        f0, f1 = features(x0.astype(jnp.float32)), features(x1.astype(jnp.float32))
        pairs = [(f0[name], f1[name]) for name in TAPS]
    layers = []
    for (f0, f1), head in zip(pairs, metric.heads, strict=True):
        diff = (unit_normalise(f0) - unit_normalise(f1)) ** 2
        # The 1x1 head as an elementwise product and channel sum: the same sum as the conv.
        score = jnp.sum(diff * head, axis=-1)
        if spatial:
            layers.append(_upsample(score, x0.shape[1], x0.shape[2]))
        else:
            layers.append(jnp.mean(score, axis=(1, 2)))
    total = functools.reduce(jnp.add, layers)
    return (total, tuple(layers)) if per_layer else total
