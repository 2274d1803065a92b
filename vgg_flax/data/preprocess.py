"""Pure TensorFlow image transforms: the paper's training and test preprocessing.

Every geometric transform is one "scaled crop": rescale the image to (new_h, new_w), then take the
(crop_h, crop_w) window at (top, left). It is computed on the decoded window of the original image
that the crop needs (fused `decode_and_crop_jpeg` for JPEG bytes) with a translated antialiased
bilinear resample (`ScaleAndTranslate`, the kernel behind `tf.image.resize(antialias=True)`), so the
result equals resizing the whole image and then cropping, without decoding or resizing the rest.
Pixels are rounded to 8-bit after the resample, as PIL, torchvision and Caffe produce them.
Sizes are checked from the file header before any decoding (`MAX_PIXELS`), and the whole
rescaled image of dense evaluation against `MAX_SCALED_PIXELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vgg_flax import preprocessing
from vgg_flax.data._tf import tf

# libjpeg's accurate integer DCT decodes exactly as PIL (and so torchvision) does; TensorFlow's
# default (the fast DCT) differs by up to 6 levels.
JPEG_DCT = "INTEGER_ACCURATE"

# (height, width) -> (new_h, new_w, top, left, crop_h, crop_w), all int32 scalars.
Plan = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, ...]]

# The most pixels an image may declare; refused from its header, before decoding. PIL's
# decompression-bomb limit: a 746 KB PNG can declare 16000x16000 pixels (768 MB decoded).
MAX_PIXELS = 89_478_485
# The most pixels of a whole rescaled image (dense evaluation, `whole_plan`): at Q=256 a
# 20000x10 image becomes 512000x256 and would ask XLA for tens of GB.
MAX_SCALED_PIXELS = 1 << 24
_PNG = (137, 80, 78, 71, 13, 10, 26, 10)
_GIF = tuple(b"GIF8")
_BMP = tuple(b"BM")


def header_shape(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width) as int64 from the header of JPEG, PNG, GIF or BMP bytes, not decoding.

    (0, 0) for other formats (the decoder judges them). A JPEG without a valid header fails
    here as it would in the decoder.
    """
    padded = tf.strings.join([data, tf.constant(b"\0" * 32)])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8), tf.int64)

    def number(start: int, size: int, big_endian: bool) -> tf.Tensor:
        digits = head[start : start + size]
        digits = tf.reverse(digits, [0]) if big_endian else digits
        return tf.reduce_sum(digits * tf.constant([256**i for i in range(size)], tf.int64))

    def starts_with(magic: tuple[int, ...]) -> tf.Tensor:
        return tf.reduce_all(head[: len(magic)] == tf.constant(magic, tf.int64))

    def signed32(value: tf.Tensor) -> tf.Tensor:  # BMP heights are negative for top-down rows
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1]

    zero = tf.constant(0, tf.int64)
    return tf.case(
        [
            (tf.io.is_jpeg(data), jpeg),
            (starts_with(_PNG), lambda: (number(20, 4, True), number(16, 4, True))),
            (starts_with(_GIF), lambda: (number(8, 2, False), number(6, 2, False))),
            (
                starts_with(_BMP),
                lambda: (signed32(number(22, 4, False)), signed32(number(18, 4, False))),
            ),
        ],
        default=lambda: (zero, zero),
        exclusive=False,
    )


def checked_size(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """`image`, once `height` x `width` is found within MAX_PIXELS (else an error saying so)."""
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    message = tf.strings.format(
        "the image is {}x{} pixels (width x height), over the limit of {} pixels "
        "(vgg_flax.data.preprocess.MAX_PIXELS)",
        (width, height, MAX_PIXELS),
    )
    check = tf.debugging.Assert(height * width <= MAX_PIXELS, [message])
    with tf.control_dependencies([check]):
        return tf.identity(image)


def resized_shape(height: tf.Tensor, width: tf.Tensor, size: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Shape with the smaller side `size`; the longer side is floored (torchvision's `Resize`)."""
    h, w, s = (tf.cast(v, tf.float64) for v in (height, width, size))
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = tf.cast(tf.floor(s * long / short), tf.int32)
    size = tf.cast(size, tf.int32)
    portrait = height > width
    return tf.where(portrait, new_long, size), tf.where(portrait, size, new_long)


def center_offset(size: tf.Tensor, crop: tf.Tensor | int) -> tf.Tensor:
    """torchvision's centre-crop offset: round((size - crop) / 2), ties to even like Python."""
    return tf.cast(tf.round(tf.cast(size - crop, tf.float64) / 2.0), tf.int32)


def sample_scale(seed: tf.Tensor, scale_range: Sequence[int]) -> tf.Tensor:
    """Scale jittering: S drawn uniformly from the integers in [Smin, Smax]."""
    smin, smax = scale_range
    return tf.random.stateless_uniform([], seed, minval=smin, maxval=smax + 1, dtype=tf.int32)


def train_plan(seed: tf.Tensor, scale: int | Sequence[int], crop: int, random_crop: bool) -> Plan:
    """Rescale so the smaller side is S (int, or (Smin, Smax) for jitter), then crop `crop`."""
    scale_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))

    def plan(height, width):
        s = sample_scale(scale_seed, scale) if isinstance(scale, Sequence) else tf.constant(scale)
        new_h, new_w = resized_shape(height, width, s)
        if random_crop:
            top = tf.random.stateless_uniform([], y_seed, 0, new_h - crop + 1, dtype=tf.int32)
            left = tf.random.stateless_uniform([], x_seed, 0, new_w - crop + 1, dtype=tf.int32)
        else:
            top, left = center_offset(new_h, crop), center_offset(new_w, crop)
        return new_h, new_w, top, left, tf.constant(crop), tf.constant(crop)

    return plan


def center_plan(scale: int, crop: int) -> Plan:
    """Test time: smaller side to Q, centre crop (torchvision: Q=256, crop=224)."""

    def plan(height, width):
        new_h, new_w = resized_shape(height, width, scale)
        top, left = center_offset(new_h, crop), center_offset(new_w, crop)
        return new_h, new_w, top, left, tf.constant(crop), tf.constant(crop)

    return plan


def whole_plan(scale: int) -> Plan:
    """Test time for dense evaluation: smaller side to Q, the whole image kept."""

    def plan(height, width):
        new_h, new_w = resized_shape(height, width, scale)
        pixels = tf.cast(new_h, tf.int64) * tf.cast(new_w, tf.int64)
        message = tf.strings.format(
            "the image ({}x{} pixels) rescaled to smaller side {} is {}x{} pixels, over the "
            "limit of {} for a whole image (vgg_flax.data.preprocess.MAX_SCALED_PIXELS); its "
            "aspect ratio is too extreme for dense evaluation",
            (width, height, scale, new_w, new_h, MAX_SCALED_PIXELS),
        )
        with tf.control_dependencies([tf.debugging.Assert(pixels <= MAX_SCALED_PIXELS, [message])]):
            new_h, new_w = tf.identity(new_h), tf.identity(new_w)
        return new_h, new_w, tf.constant(0), tf.constant(0), new_h, new_w

    return plan


def _window(size, new_size, start, length):
    """Rows [lo, hi) of the original that output rows [start, start+length) read, and the scale."""
    scale = tf.cast(new_size, tf.float32) / tf.cast(size, tf.float32)
    # The antialiased triangle kernel reaches max(1, 1/scale) input pixels; one more for rounding.
    margin = tf.cast(tf.math.ceil(tf.maximum(1.0, 1.0 / scale)), tf.int32) + 1
    lo = tf.cast(tf.floor(tf.cast(start, tf.float32) / scale), tf.int32) - margin
    hi = tf.cast(tf.math.ceil(tf.cast(start + length, tf.float32) / scale), tf.int32) + margin
    return tf.maximum(lo, 0), tf.minimum(hi, size), scale


def _resample(window, lo_y, lo_x, scale_y, scale_x, top, left, crop_h, crop_w):
    # An input pixel at window coordinate x lies at output coordinate (x + lo) * scale - top.
    out = tf.raw_ops.ScaleAndTranslate(
        images=window[None],
        size=tf.stack([crop_h, crop_w]),
        scale=tf.stack([scale_y, scale_x]),
        translation=tf.stack(
            [
                tf.cast(lo_y, tf.float32) * scale_y - tf.cast(top, tf.float32),
                tf.cast(lo_x, tf.float32) * scale_x - tf.cast(left, tf.float32),
            ]
        ),
        kernel_type="triangle",
        antialias=True,
    )[0]
    return tf.round(tf.clip_by_value(out, 0.0, 255.0))


def _crop_array(image: tf.Tensor, plan: Plan) -> tf.Tensor:
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    new_h, new_w, top, left, crop_h, crop_w = plan(height, width)
    y0, y1, sy = _window(height, new_h, top, crop_h)
    x0, x1, sx = _window(width, new_w, left, crop_w)
    window = image[y0:y1, x0:x1]
    return _resample(window, y0, x0, sy, sx, top, left, crop_h, crop_w)


def _crop_jpeg(data: tf.Tensor, plan: Plan) -> tf.Tensor:
    shape = tf.io.extract_jpeg_shape(data)
    height, width = shape[0], shape[1]
    new_h, new_w, top, left, crop_h, crop_w = plan(height, width)
    y0, y1, sy = _window(height, new_h, top, crop_h)
    x0, x1, sx = _window(width, new_w, left, crop_w)
    window = tf.io.decode_and_crop_jpeg(
        data, tf.stack([y0, x0, y1 - y0, x1 - x0]), channels=3, dct_method=JPEG_DCT
    )
    return _resample(window, y0, x0, sy, sx, top, left, crop_h, crop_w)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """A decoded HxWxC uint8 image as HxWx3 (grey is repeated, alpha dropped)."""
    channels = tf.shape(image)[-1]
    image = tf.cond(channels == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
    return tf.ensure_shape(image, [None, None, 3])


def decode(image: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, GIF, BMP) or a decoded array -> HxWx3 uint8.

    Bytes whose header declares more than MAX_PIXELS pixels are refused before decoding.
    """
    if image.dtype == tf.string:
        image = checked_size(image, *header_shape(image))
        return tf.cond(
            tf.io.is_jpeg(image),
            lambda: tf.io.decode_jpeg(image, channels=3, dct_method=JPEG_DCT),
            lambda: tf.io.decode_image(image, channels=3, expand_animations=False),
        )
    return to_rgb(image)


def scaled_crop(image: tf.Tensor, plan: Plan) -> tf.Tensor:
    """Apply `plan` to encoded bytes or a decoded array; float32 crop in 0-255, HxWx3.

    Images over MAX_PIXELS are refused (bytes: from the header, before decoding).
    """
    if image.dtype != tf.string:
        shape = tf.shape(image)
        return _crop_array(to_rgb(checked_size(image, shape[0], shape[1])), plan)
    image = checked_size(image, *header_shape(image))
    return tf.cond(
        tf.io.is_jpeg(image),
        lambda: _crop_jpeg(image, plan),
        lambda: _crop_array(decode(image), plan),
    )


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def pca_lighting(
    image: tf.Tensor,
    seed: tf.Tensor,
    std: float,
    eigval: Sequence[float] = preprocessing.IMAGENET_PCA_EIGVAL,
    eigvec: Sequence[Sequence[float]] = preprocessing.IMAGENET_PCA_EIGVEC,
) -> tf.Tensor:
    """AlexNet's colour shift: add V (alpha * lambda), alpha ~ N(0, std), per image.

    The eigen-pairs are for pixels in [0, 1] (columns of `eigvec` are the eigenvectors); the image
    is in 0-255, so the shift is scaled by 255.
    """
    alpha = tf.random.stateless_normal([3], seed, stddev=std)
    shift = tf.linalg.matvec(tf.constant(eigvec, tf.float32), alpha * tf.constant(eigval))
    return image + 255.0 * shift


def normalize(image: tf.Tensor, preset: preprocessing.Preset) -> tf.Tensor:
    """RGB 0-255 -> network input for `preset` (`vgg_flax.preprocessing.preprocess` on tf).

    `vgg_flax.data.config.preprocessing_for` gives a data config's preset.
    """
    return preprocessing.preprocess(image, preset, input_range=(0.0, 255.0))
