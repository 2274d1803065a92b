"""Protocol geometry, view weights, padded batching and aggregation, with a stand-in scorer."""

import numpy as np
import pytest

from vgg_flax.evaluate import ShapeBatcher, evaluate, evaluate_arrays, padded_shape, views
from vgg_flax.evaluate.batching import batch_rows, count_shapes
from vgg_flax.evaluate.protocols import crop_offsets, multicrops


class FakeScorer:
    """Stands in for a network: 'posterior' = (mean of valid channel 0, valid h, valid w)."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self.shapes: set = set()
        self.rows = 0

    def __call__(self, images, valid_hw):
        self.shapes.add(images.shape[:3])
        self.rows += len(images)
        out = []
        for image, (h, w) in zip(images, valid_hw, strict=True):
            assert not image[h:].any() and not image[:, w:].any()  # zero padding only
            out.append([image[:h, :w, 0].mean() + self.offset, h, w])
        return np.array(out)


def test_multicrop_grid_has_50_crops_inside_the_image_covering_its_corners():
    height, width = 256, 341
    offsets = crop_offsets(height, width)
    assert len(offsets) == 25 and len(set(offsets)) == 25
    tops = sorted({t for t, _ in offsets})
    lefts = sorted({left for _, left in offsets})
    assert tops[0] == 0 and tops[-1] == height - 224 and len(tops) == 5
    assert lefts[0] == 0 and lefts[-1] == width - 224 and len(lefts) == 5
    assert max(np.diff(lefts)) - min(np.diff(lefts)) <= 1  # regular grid, up to rounding
    image = np.arange(height * width * 3, dtype=np.float32).reshape(height, width, 3)
    crops = multicrops(image)
    assert len(crops) == 50 and all(c.shape == (224, 224, 3) for c in crops)
    corners = {image[0, 0, 0], image[0, -1, 0], image[-1, 0, 0], image[-1, -1, 0]}
    seen = {float(v) for c in crops for v in (c[0, 0, 0], c[0, -1, 0], c[-1, 0, 0], c[-1, -1, 0])}
    assert corners <= seen
    np.testing.assert_array_equal(crops[1], crops[0][:, ::-1])  # each crop then its flip
    # A 224 image yields 25 identical crops: the grid degenerates, still inside the image.
    assert set(crop_offsets(224, 224)) == {(0, 0)}


def test_view_weights_per_protocol():
    images = {256: np.zeros((256, 300, 3)), 384: np.zeros((384, 450, 3))}
    dense = views("dense", images)
    assert len(dense) == 4 and sum(w for _, w in dense) == pytest.approx(1)
    multi = views("multicrop", images)
    assert len(multi) == 100 and all(w == pytest.approx(0.01) for _, w in multi)
    both = views("dense+multicrop", images)
    assert len(both) == 104 and sum(w for _, w in both) == pytest.approx(1)
    assert sum(w for v, w in both if v.shape[:2] != (224, 224)) == pytest.approx(0.5)
    assert len(views("dense", images, flips=False)) == 2
    with pytest.raises(ValueError, match="unknown protocol"):
        views("tencrop", images)
    with pytest.raises(ValueError, match="one image per example"):
        views("center", images)
    with pytest.raises(ValueError, match="cannot be evaluated densely"):
        views("multicrop", {200: np.zeros((200, 300, 3))})


def test_padded_shapes_are_bounded_and_batches_fill_to_a_fixed_size():
    assert padded_shape(224, 225) == (224, 256)
    with pytest.raises(ValueError, match="multiple of the network stride"):
        padded_shape(224, 224, align=48)
    rng = np.random.default_rng(0)
    batcher = ShapeBatcher(batch_size=4)
    batches, sizes = [], []
    for key in range(60):
        size = tuple(int(s) for s in rng.integers(224, 513, 2))
        sizes.append(size)
        batches += batcher.add(key, np.ones((*size, 3), np.float32))
    batches += batcher.flush()
    shapes = {b.images.shape for b in batches}
    assert len(shapes) <= 9 * 9  # sides round up to one of 224, 256, ..., 512
    for batch in batches:  # each shape always has the same batch size
        assert len(batch.keys) == batch_rows(batch.images.shape[1:3], 4)
    keys = [k for b in batches for k in b.keys if k is not None]
    assert sorted(keys) == list(range(60))  # every image exactly once
    assert count_shapes([(375, 500), (500, 375), (333, 500), (500, 500)], 256) == 4
    with pytest.raises(ValueError, match="cannot be evaluated densely"):
        batcher.add("small", np.zeros((223, 300, 3), np.float32))


def test_evaluate_averages_views_flips_scales_and_networks():
    rng = np.random.default_rng(1)
    examples = []
    for _ in range(5):
        h, w = (int(s) for s in rng.integers(224, 300, 2))
        examples.append({224: rng.standard_normal((h, w, 3)).astype(np.float32)})
    nets = [FakeScorer(0.0), FakeScorer(1.0)]
    got = evaluate_arrays(nets, examples, "dense", batch_size=3)
    for example, posterior in zip(examples, got, strict=True):
        (image,) = example.values()
        # The flip has the same mean and size, so the mean over views equals one view.
        expected = [image[:, :, 0].mean() + 0.5, *image.shape[:2]]
        np.testing.assert_allclose(posterior, expected, rtol=1e-5)
    # Every view of every example is scored once per network (filler rows are extra).
    real_views = 2 * len(examples)
    assert nets[0].rows >= real_views and nets[0].rows == nets[1].rows

    crops = evaluate_arrays([FakeScorer()], examples[:2], "multicrop")
    for example, posterior in zip(examples[:2], crops, strict=True):
        mean = np.mean([c[:, :, 0].mean() for c in multicrops(example[224])])
        np.testing.assert_allclose(posterior, [mean, 224, 224], rtol=1e-5)
    both = evaluate_arrays([FakeScorer()], examples[:2], "dense+multicrop")
    np.testing.assert_allclose(both, (got[:2] - [0.5, 0, 0] + crops) / 2, rtol=1e-5)


def test_evaluate_yields_each_key_once_and_rejects_duplicates():
    image = np.zeros((224, 224, 3), np.float32)
    keys = [
        key for key, _ in evaluate([FakeScorer()], [(k, {224: image}) for k in "abc"], "center")
    ]
    assert sorted(keys) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="appears twice"):
        list(evaluate([FakeScorer()], [("a", {224: image}), ("a", {224: image})], "center"))
