"""Perceptual losses on a frozen VGG: content (feature), Gram-matrix style, total variation.

Input convention: NHWC RGB images in [0, 1]; `PerceptualLoss` normalises them with the trunk's
preprocessing (its usage record's: torchvision's mean and std for torchvision's weights, Caffe's
BGR 0-255 minus the mean pixel for the authors' Keras/Caffe files) in float32. Taps are vgg-flax
activation names: `convN_M` is a convolution's output before its ReLU, `reluN_M` after it.

- Content: per layer, the mean over (H, W, C) of the squared ("mse") or absolute ("l1")
  feature difference, i.e. 1/(C H W) ||phi(x) - phi(y)||^2 (Johnson et al. 2016, eq. 2).
- Style: G = F^T F over the (H W, C) feature matrix F. "gatys": sum (G_x - G_s)^2 / (4 C^2
  (H W)^2) (Gatys et al. 2016, eq. 4); "johnson": ||G_x - G_s||_F^2 with G divided by C H W
  (Johnson et al. 2016, eq. 3).
- Total variation: sum over neighbouring pixel pairs of |difference|^power (power 1 is the
  anisotropic TV of `tf.image.total_variation`).
All three return one value per image; `PerceptualLoss` averages them over the batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from vgg_flax.models.vgg import VGG
from vgg_flax.perceptual import frozen
from vgg_flax.preprocessing import PRESETS, Preset, get_preset, preprocess

CRITERIA = ("mse", "l1")
GRAMS = ("gatys", "johnson")

Layers = tuple[tuple[str, float], ...]


def gram_matrix(features: jax.Array, normalization: str = "johnson") -> jax.Array:
    """(N, C, C) Gram matrices of NHWC features in float32: F^T F, divided by C H W for "johnson".

    "gatys" leaves G unnormalised (its normalisation is in `style_loss`).
    """
    _check(normalization, GRAMS, "Gram normalisation")
    n, height, width, channels = features.shape
    flat = features.astype(jnp.float32).reshape(n, height * width, channels)
    gram = jnp.einsum("npc,npd->ncd", flat, flat, precision=jax.lax.Precision.HIGHEST)
    return gram / (channels * height * width) if normalization == "johnson" else gram


def content_loss(
    features: Mapping[str, jax.Array],
    targets: Mapping[str, jax.Array],
    layers: Layers,
    criterion: str = "mse",
) -> jax.Array:
    """Per image: sum over `layers` ((name, weight) pairs) of weight x mean |f - t|^p over H W C."""
    _check(criterion, CRITERIA, "criterion")
    total = 0.0
    for name, weight in layers:
        diff = features[name] - targets[name]
        distance = diff**2 if criterion == "mse" else jnp.abs(diff)
        total = total + weight * jnp.mean(distance, axis=(1, 2, 3))
    return total


def style_loss(
    features: Mapping[str, jax.Array],
    target_grams: Mapping[str, jax.Array],
    layers: Layers,
    normalization: str = "johnson",
) -> jax.Array:
    """Per image: sum over `layers` of weight x the Gram distance (module docstring).

    `target_grams[name]` is `gram_matrix(target_features, normalization)`, (N or 1, C, C).
    """
    total = 0.0
    for name, weight in layers:
        _, height, width, channels = features[name].shape
        squared = jnp.sum(
            (gram_matrix(features[name], normalization) - target_grams[name]) ** 2, axis=(1, 2)
        )
        if normalization == "gatys":
            squared = squared / (4.0 * channels**2 * (height * width) ** 2)
        total = total + weight * squared
    return total


def total_variation(images: jax.Array, power: float = 1.0) -> jax.Array:
    """Per image: sum of |vertical and horizontal neighbour differences|^power over H W C."""
    images = images.astype(jnp.float32)
    down = jnp.abs(images[:, 1:, :, :] - images[:, :-1, :, :]) ** power
    right = jnp.abs(images[:, :, 1:, :] - images[:, :, :-1, :]) ** power
    return jnp.sum(down, axis=(1, 2, 3)) + jnp.sum(right, axis=(1, 2, 3))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A published recipe: trunk weights, taps with weights, distances and loss weights."""

    trunk: str  # a name of vgg_flax.list_pretrained()
    content: Layers
    style: Layers = ()
    criterion: str = "mse"
    gram: str = "johnson"
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 0.0
    source: str = ""


RECIPES: dict[str, Recipe] = {
    # Johnson, Alahi & Fei-Fei, ECCV 2016, sec. 4.1: VGG-16, content relu2_2, style relu1_2,
    # relu2_2, relu3_3, relu4_3; loss weights as their code's defaults (fast-neural-style's
    # train.lua: content 1, style 5, tv_strength 1e-6; the TV term here is `total_variation`).
    "johnson": Recipe(
        "vgg16",
        content=(("relu2_2", 1.0),),
        style=(("relu1_2", 1.0), ("relu2_2", 1.0), ("relu3_3", 1.0), ("relu4_3", 1.0)),
        criterion="mse",
        gram="johnson",
        content_weight=1.0,
        style_weight=5.0,
        tv_weight=1e-6,
        source="Johnson et al., ECCV 2016",
    ),
    # Ledig et al., CVPR 2017, eq. 5: "VGG54", the 4th convolution *after activation* before the
    # 5th max-pooling of VGG-19, i.e. relu5_4; MSE; the loss rescaled by 1/12.75^2 (~0.006).
    "srgan": Recipe(
        "vgg19",
        content=(("relu5_4", 1.0),),
        content_weight=1.0 / 12.75**2,
        source="Ledig et al., CVPR 2017 (SRGAN)",
    ),
    # Wang et al., ECCV workshops 2018, sec. 3.3: VGG-19 features *before* activation, conv5_4,
    # with the L1 distance, perceptual weight 1.
    "esrgan": Recipe(
        "vgg19",
        content=(("conv5_4", 1.0),),
        criterion="l1",
        source="Wang et al., ECCVW 2018 (ESRGAN)",
    ),
}


@struct.dataclass
class PerceptualLoss:
    """Content + style + total variation on a frozen VGG; a pytree, so it passes through `jit`.

    `loss(images, content=None, style=None) -> (total, parts)`: `images` NHWC in [0, 1];
    `content` target images of the same shape (content term skipped if None); `style` target
    images or `style_targets(...)` Grams (style term skipped if None). `total` is the weighted
    sum averaged over the batch; `parts` maps "content", "style", "tv" to per-image values.
    """

    variables: Any
    model: VGG = struct.field(pytree_node=False)
    content_layers: Layers = struct.field(pytree_node=False, default=())
    style_layers: Layers = struct.field(pytree_node=False, default=())
    criterion: str = struct.field(pytree_node=False, default="mse")
    gram: str = struct.field(pytree_node=False, default="johnson")
    content_weight: float = struct.field(pytree_node=False, default=1.0)
    style_weight: float = struct.field(pytree_node=False, default=1.0)
    tv_weight: float = struct.field(pytree_node=False, default=0.0)
    tv_power: float = struct.field(pytree_node=False, default=1.0)
    preprocessing: Preset = struct.field(pytree_node=False, default=PRESETS["torchvision"])
    dtype: Any = struct.field(pytree_node=False, default=None)
    remat: bool = struct.field(pytree_node=False, default=False)

    def features(self, images: jax.Array, taps: Sequence[str] | None = None) -> dict[str, Any]:
        """Float32 activations `taps` (default: every content and style tap) of [0, 1] images."""
        if taps is None:
            taps = [name for name, _ in self.content_layers + self.style_layers]
        x = preprocess(jnp.asarray(images, jnp.float32), self.preprocessing)
        return frozen.activations(
            self.model, self.variables, x, taps, dtype=self.dtype, remat=self.remat
        )

    def style_targets(self, images: jax.Array) -> dict[str, jax.Array]:
        """The style layers' Gram matrices of target images, to reuse across steps."""
        feats = self.features(images, [name for name, _ in self.style_layers])
        return {name: gram_matrix(feats[name], self.gram) for name, _ in self.style_layers}

    def __call__(
        self,
        images: jax.Array,
        content: jax.Array | None = None,
        style: jax.Array | Mapping[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Weighted total over the batch and the per-image parts; see the class docstring."""
        feats = self.features(images)
        parts: dict[str, jax.Array] = {}
        total = jnp.zeros((images.shape[0],), jnp.float32)
        if content is not None and self.content_layers:
            targets = self.features(content, [name for name, _ in self.content_layers])
            parts["content"] = content_loss(feats, targets, self.content_layers, self.criterion)
            total = total + self.content_weight * parts["content"]
        if style is not None and self.style_layers:
            grams = style if isinstance(style, Mapping) else self.style_targets(style)
            parts["style"] = style_loss(feats, grams, self.style_layers, self.gram)
            total = total + self.style_weight * parts["style"]
        if self.tv_weight:
            parts["tv"] = total_variation(images, self.tv_power)
            total = total + self.tv_weight * parts["tv"]
        return jnp.mean(total), parts


def perceptual_loss(
    recipe: str | None = None,
    *,
    trunk: str | os.PathLike | Mapping[str, Any] | frozen.Trunk | None = None,
    **options: Any,
) -> PerceptualLoss:
    """A `PerceptualLoss` from a recipe ("johnson", "srgan", "esrgan") and/or `options`.

    `trunk`: the recipe's torchvision weights by default (vgg16 without a recipe), any name of
    `vgg_flax.list_pretrained()`, any source `vgg_flax.load` takes, what it returns, or a
    `(model, variables)` pair. The trunk's usage record sets the input preprocessing (Caffe's
    for a Keras/Caffe trunk; a `preprocessing=` option, a `Preset` or a preset name, overrides
    it). `options` are `PerceptualLoss` fields; layer lists may be given as dicts
    {tap: weight}. `pooling="avg"` swaps max for average pooling (Gatys).
    """
    fields: dict[str, Any] = {}
    default_trunk = "vgg16"
    if recipe is not None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        values = dataclasses.asdict(RECIPES[recipe])
        default_trunk = values.pop("trunk")
        values.pop("source")
        fields = {
            "content_layers": values.pop("content"),
            "style_layers": values.pop("style"),
            **values,
        }
    pooling = options.pop("pooling", None)
    for key in ("content_layers", "style_layers"):
        if isinstance(options.get(key), Mapping):
            options[key] = tuple(options[key].items())
    if "preprocessing" in options:
        options["preprocessing"] = get_preset(options["preprocessing"])
    fields |= options
    model, variables, usage = frozen.resolve_trunk(trunk, default_trunk)
    fields.setdefault("preprocessing", usage.preprocessing)
    if pooling is not None:
        model = model.clone(pooling=pooling)
    fields["content_layers"] = tuple(tuple(pair) for pair in fields.get("content_layers", ()))
    fields["style_layers"] = tuple(tuple(pair) for pair in fields.get("style_layers", ()))
    frozen.check_taps(model, [n for n, _ in fields["content_layers"] + fields["style_layers"]])
    _check(fields.get("criterion", "mse"), CRITERIA, "criterion")
    _check(fields.get("gram", "johnson"), GRAMS, "Gram normalisation")
    return PerceptualLoss(variables=variables, model=model, **fields)


def _check(value: str, known: tuple[str, ...], what: str) -> None:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(known)}")
