"""The VGG family as one Linen module, built from the paper's layer lists.

fc6 is stored as a 7x7 convolution and fc7/fc8 as 1x1 convolutions, so one set of weights runs
both as a torchvision-style classifier (adaptive pooling of pool5 to 7x7, then the head) and as
the paper's fully convolutional net for dense evaluation (section 3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_flax.models import arch as arch_lib
from vgg_flax.models.arch import ARCHITECTURE_FIELDS
from vgg_flax.models.initializers import INITS, kernel_init
from vgg_flax.models.layers import BatchNorm, local_response_norm
from vgg_flax.models.ops import Conv, check_kernels, pool_2x2, pooled_size

MODES = ("classify", "dense", "dense_map")


class VGG(nn.Module):
    """A VGG network, NHWC input; its architecture is the fields below.

    - arch: a Table 1 name ("A", "A-LRN", "B", "C", "D", "E") or a layer list as a tuple (see
      `vgg_flax.models.arch`: ints for 3x3 convs, "1x1-C", "M", "LRN"), five "M" in all;
    - batch_norm: BatchNorm after every conv; width: multiplier of every conv's channels;
      head_width: outputs of fc6 and fc7 (4096 in the paper); pooling: "max" (the paper),
      "avg" (as the style-transfer literature uses) or "l2" (DISTS's L2 pooling,
      `vgg_flax.models.ops.l2_pool`); num_classes: outputs of fc8;
    - kernels: "auto" (faster formulations on CPUs, standard `lax` ops elsewhere) or "lax".

    `__call__(images, train=False, *, mode="classify", features=())`:
    - mode "classify": logits (N, num_classes), for any input of at least 32x32;
    - mode "dense": the dense-evaluation score map averaged over space, (N, num_classes);
    - mode "dense_map": the class score map itself, (N, h, w, num_classes), input >= 224x224;
    - features: names from `vgg_flax.models.arch.activation_names` (e.g. "relu4_2", "pool5", "fc7",
      "logits"); when given, a dict of those activations is returned instead, and the network
      stops after the last one asked for.
    - valid_hw (modes "dense"/"dense_map" only): int array (N, 2) of each image's true height and
      width when images of several sizes are zero-padded at the bottom and right into one batch.
      Padded positions are zeroed after every trunk layer, exactly as the convs' zero padding at
      the true border would see them, so the scores equal running each image at its own size
      (each true size must be at least 224); "dense" averages only the valid score positions,
      "dense_map" returns the map with invalid positions zeroed.
    - dropout_masks (train=True only): {"fc6": keep, "fc7": keep}, boolean keep masks of the
      dropout after relu6 and relu7, shaped like those activations ((N, head_width) in mode
      "classify"); kept units are scaled by 1 / (1 - dropout_rate) as usual. Given, they replace
      the masks drawn from the "dropout" rng (so a parity run can use PyTorch's very masks).
    - trained_pool5 (modes "dense"/"dense_map" only): for a net trained on inputs under 224, the
      side p (< 7) of the pool5 map it was trained on. Its classifier averaged that map up to
      7x7 before fc6; here that pooling is folded into fc6 (`layers.fold_adaptive_pool`), which
      slides as a p x p window over pool5, so inputs need only be the trained size (32 * p).
    """

    arch: str | tuple[int | str, ...] = "D"
    batch_norm: bool = False
    width: float = 1.0
    head_width: int = arch_lib.HEAD_WIDTH
    pooling: str = "max"
    num_classes: int = 1000
    dropout_rate: float = 0.5
    weight_init: str = "paper"
    init_std: float = 0.01
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernels: str = "auto"

    def _conv(self, name: str, features: int, kernel: int, head: bool) -> Conv:
        return Conv(
            features,
            kernel,
            padding=0 if head else kernel // 2,
            kernel_init=kernel_init(self.weight_init, head=head, std=self.init_std),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernels=self.kernels,
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        train: bool = False,
        *,
        mode: str = "classify",
        features: Sequence[str] = (),
        valid_hw: jax.Array | None = None,
        dropout_masks: dict[str, jax.Array] | None = None,
        trained_pool5: int | None = None,
    ) -> jax.Array | dict[str, jax.Array]:
        """Run the network; see the class docstring for modes and the keyword arguments."""
        wanted = self._check(images, mode, features, trained_pool5)
        _check_dropout_masks(dropout_masks, train)
        if valid_hw is not None and mode == "classify":
            raise ValueError("valid_hw needs mode='dense' or 'dense_map' (classify pools to 7x7)")
        found: dict[str, jax.Array] = {}

        def keep(name: str, value: jax.Array) -> bool:
            """Record a wanted activation; True once every wanted one is recorded."""
            if name in wanted:
                found[name] = value
            return bool(wanted) and len(found) == len(wanted)

        x = images.astype(self.dtype)
        for layer in arch_lib.layers(self.arch, self.width):
            if layer.kind == "conv":
                suffix = layer.name[len("conv") :]
                x = self._conv(layer.name, layer.features, layer.kernel, head=False)(x)
                if keep(layer.name, x):
                    return found
                if self.batch_norm:
                    bn = BatchNorm(
                        dtype=self.dtype, param_dtype=self.param_dtype, name=f"bn{suffix}"
                    )
                    x = bn(x, train)
                    if keep(f"bn{suffix}", x):
                        return found
                x = nn.relu(x)
                name = f"relu{suffix}"
            elif layer.kind == "pool":
                x = pool_2x2(x, self.pooling, self.kernels)
                name = layer.name
            else:
                x = local_response_norm(x)
                name = layer.name
            if valid_hw is not None:
                # Floor halving matches a pool on the unpadded image, which drops an odd last row
                # (an "l2" pool keeps it: its size rounds up).
                valid_hw = pooled_size(valid_hw, self.pooling) if layer.kind == "pool" else valid_hw
                x = _zero_outside(x, valid_hw)
            if keep(name, x):
                return found

        # classify: fc6 pools adaptively to its 7x7 window first (folded into it on a 1x1 map).
        pool_to = (arch_lib.HEAD_INPUT_SIZE,) * 2 if mode == "classify" else None
        window = arch_lib.HEAD_INPUT_SIZE if trained_pool5 is None else trained_pool5
        pooled_from = None if trained_pool5 is None else (trained_pool5,) * 2
        head = (
            ("6", self.head_width, arch_lib.HEAD_INPUT_SIZE),
            ("7", self.head_width, 1),
            ("8", self.num_classes, 1),
        )
        for suffix, width, kernel in head:
            fc6 = suffix == "6"
            x = self._conv(f"fc{suffix}", width, kernel, head=True)(
                x, pool_to=pool_to if fc6 else None, pooled_from=pooled_from if fc6 else None
            )
            if suffix == "8":
                break
            if keep(f"fc{suffix}", self._squeeze(x, mode)):
                return found
            x = nn.relu(x)
            if keep(f"relu{suffix}", self._squeeze(x, mode)):
                return found
            if dropout_masks is None:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            else:
                x = self._masked_dropout(x, dropout_masks[f"fc{suffix}"])
        x = self._squeeze(x, mode)
        if valid_hw is not None:
            # fc6's VALID window (7, or the trained pool5 side) leaves h/32 - (window - 1) rows.
            valid_hw = valid_hw - (window - 1)
            x = _zero_outside(x, valid_hw)
        if keep("fc8", x):
            return found
        if mode == "dense" and valid_hw is not None:
            x = jnp.sum(x, axis=(1, 2)) / jnp.prod(valid_hw, axis=1, keepdims=True).astype(x.dtype)
        elif mode == "dense":
            x = jnp.mean(x, axis=(1, 2))
        if keep("logits", x):
            return found
        return x

    def _masked_dropout(self, x: jax.Array, keep: jax.Array) -> jax.Array:
        # Flax's Dropout with the mask given instead of drawn: where(keep, x / (1 - rate), 0).
        if self.dropout_rate >= 1.0:
            return jnp.zeros_like(x)
        keep = jnp.reshape(keep, x.shape)
        return jnp.where(keep, x / (1.0 - self.dropout_rate), jnp.zeros((), x.dtype))

    @staticmethod
    def _squeeze(x: jax.Array, mode: str) -> jax.Array:
        # The classifier's head maps are 1x1: hand back (N, C) as torchvision's Linear layers do.
        return x.reshape(x.shape[0], x.shape[-1]) if mode == "classify" else x

    def _check(
        self, images: jax.Array, mode: str, features: Sequence[str], trained_pool5: int | None
    ) -> set[str]:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if trained_pool5 is not None and (
            mode == "classify" or not 1 <= trained_pool5 < arch_lib.HEAD_INPUT_SIZE
        ):
            raise ValueError(
                f"trained_pool5={trained_pool5!r} needs mode 'dense' or 'dense_map' and a side "
                f"from 1 to {arch_lib.HEAD_INPUT_SIZE - 1} (nets trained on inputs under "
                f"{arch_lib.MIN_DENSE_SIZE}); classify pools any map to 7x7 already"
            )
        if self.weight_init not in INITS:
            raise ValueError(f"unknown init {self.weight_init!r}; choose one of {', '.join(INITS)}")
        if self.pooling not in arch_lib.POOLINGS:
            raise ValueError(
                f"unknown pooling {self.pooling!r}; choose one of {', '.join(arch_lib.POOLINGS)}"
            )
        check_kernels(self.kernels)
        if images.ndim != 4:
            raise ValueError(
                f"expected a batch of images of shape (N, H, W, 3), got rank {images.ndim} shape "
                f"{tuple(images.shape)}; add a batch axis with images[None] for a single image"
            )
        if images.shape[-1] != 3:
            raise ValueError(
                f"expected 3 colour channels in the last axis (NHWC), got shape "
                f"{tuple(images.shape)}; for NCHW arrays use images.transpose(0, 2, 3, 1)"
            )
        height, width = images.shape[1:3]
        least = arch_lib.MIN_CLASSIFY_SIZE if mode == "classify" else arch_lib.MIN_DENSE_SIZE
        if trained_pool5 is not None:
            least = trained_pool5 * arch_lib.NETWORK_STRIDE
        if height < least or width < least:
            raise ValueError(
                f"images of {height}x{width} are too small for mode {mode!r}: it needs at least "
                f"{least}x{least}; resize the images (dense evaluation needs fc6's 7x7 window "
                "to fit the pool5 map)"
            )
        known = arch_lib.activation_names(self.arch, self.batch_norm)
        unknown = [name for name in features if name not in known]
        if unknown:
            raise ValueError(
                f"unknown feature names {unknown} for VGG {arch_lib.arch_label(self.arch)}"
                f"{' with BatchNorm' if self.batch_norm else ''}; known: {', '.join(known)}"
            )
        return set(features)


def _check_dropout_masks(masks: dict[str, jax.Array] | None, train: bool) -> None:
    if masks is None:
        return
    if not train:
        raise ValueError("dropout_masks need train=True (dropout is off in evaluation)")
    if set(masks) != {"fc6", "fc7"}:
        raise ValueError(f"dropout_masks needs the keys fc6 and fc7, got {sorted(masks)}")


def _zero_outside(x: jax.Array, valid_hw: jax.Array) -> jax.Array:
    """Zero each image's positions at or beyond its valid (height, width) in an NHWC map."""
    rows = jnp.arange(x.shape[1])[None, :] < valid_hw[:, :1]
    cols = jnp.arange(x.shape[2])[None, :] < valid_hw[:, 1:]
    inside = rows[:, :, None, None] & cols[:, None, :, None]
    return jnp.where(inside, x, jnp.zeros((), x.dtype))


def create_model(
    arch: str | Sequence[int | str] = "D",
    *,
    batch_norm: bool = False,
    num_classes: int = 1000,
    pretrained: Any = None,
    **options: Any,
) -> VGG:
    """Build a VGG from a Table 1 name ("A", ..., "E"), a torchvision name or a layer list.

    torchvision's `_bn` names imply batch_norm=True. Other options are `VGG`'s fields: width,
    head_width, pooling, dropout_rate, weight_init, init_std, dtype, param_dtype, precision,
    kernels. E.g. `create_model("A", width=0.125, head_width=32)` is a narrow VGG-A.

    Returns the module (Flax modules hold no weights; `model.init` makes them). Pretrained
    weights come from `vgg_flax.pretrained(arch, num_classes=...)`, not from here.
    """
    if pretrained not in (None, False):
        raise ValueError(
            "create_model builds a module only and takes no pretrained=; for pretrained weights "
            f"use vgg_flax.pretrained({arch!r}, num_classes={num_classes}), or a hub repository "
            "as vgg_flax.pretrained('timm/vgg16_bn.tv_in1k') (it returns (model, variables, "
            "usage)); or in Flax NNX, where a module holds its weights, "
            f"vgg_flax.nnx.create_model({arch!r}, pretrained={pretrained!r}, "
            f"num_classes={num_classes}, rngs=nnx.Rngs(0))"
        )
    if isinstance(arch, str):
        arch, named_bn = arch_lib.resolve(arch)
    else:
        arch, named_bn = arch_lib.layer_list(arch), False
    return VGG(arch=arch, batch_norm=batch_norm or named_bn, num_classes=num_classes, **options)


def architecture(model: VGG) -> dict[str, Any]:
    """The fields that define `model`'s variables, JSON-ready; `create_model(**it)` rebuilds it."""
    spec = {field: getattr(model, field) for field in ARCHITECTURE_FIELDS}
    if not isinstance(spec["arch"], str):
        spec["arch"] = list(spec["arch"])
    return spec
