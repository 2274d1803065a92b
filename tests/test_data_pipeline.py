"""The pipeline on the digits: global batches, determinism, resumption, exactly-once eval."""

import numpy as np
import pytest

from vgg_flax import data, parallel
from vgg_flax.data import pipeline
from vgg_flax.data.sources import digits_arrays


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh()


def take(iterator, n):
    return [{k: np.asarray(v) for k, v in next(iterator).items()} for _ in range(n)]


def test_train_batches_are_global_normalised_arrays(mesh):
    it = data.train_iterator(None, global_batch_size=32, seed=0, mesh=mesh)
    batch = next(it)
    assert batch["image"].shape == (32, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    assert batch["image"].sharding == parallel.batch_sharding(mesh)
    assert it.num_classes == 10 and it.num_examples == 1437
    # With augmentation off for digits, a training image is the rendered digit minus the mean.
    images, labels, _ = digits_arrays(32)["train"]
    mean = images.mean(axis=(0, 1, 2))
    image = np.asarray(batch["image"][0]) + mean
    matches = np.flatnonzero(np.abs(images - image).max(axis=(1, 2, 3)) < 1e-3)
    assert len(matches) >= 1 and labels[matches[0]] == int(batch["label"][0])


def test_seed_fixes_order_and_epochs_reshuffle(mesh):
    def labels(seed, n):
        it = data.train_iterator(None, global_batch_size=479, seed=seed, mesh=mesh)
        return np.concatenate([b["label"] for b in take(it, n)])

    first = labels(0, 6)  # 1437 = 3 x 479: two epochs
    assert np.array_equal(first, labels(0, 6))
    assert not np.array_equal(first, labels(1, 6))
    epoch0, epoch1 = first[:1437], first[1437:]
    assert np.array_equal(np.bincount(epoch0), np.bincount(digits_arrays(32)["train"][1]))
    assert np.array_equal(np.sort(epoch0), np.sort(epoch1)) and not np.array_equal(epoch0, epoch1)


def test_resume_sees_the_same_batches(mesh):
    cfg = data.default_config(flip=True, pca_lighting=0.1, scale_range=(32, 48))
    uninterrupted = data.train_iterator(cfg, global_batch_size=100, seed=3, mesh=mesh)
    expected = take(uninterrupted, 17)[12:]  # crosses the epoch boundary at 14.37 batches
    first = data.train_iterator(cfg, global_batch_size=100, seed=3, mesh=mesh)
    take(first, 12)
    state = first.get_state()
    assert state["batches"] == 12 and state["positions"] == [1200]
    resumed = data.train_iterator(cfg, global_batch_size=100, seed=3, mesh=mesh)
    resumed.set_state(state)
    for want, got in zip(expected, take(resumed, 5), strict=True):
        np.testing.assert_array_equal(want["label"], got["label"])
        np.testing.assert_array_equal(want["image"], got["image"])
    with pytest.raises(ValueError, match="seed"):
        data.train_iterator(cfg, global_batch_size=100, seed=4, mesh=mesh).set_state(state)


@pytest.mark.parametrize("hosts,batch", [(1, 64), (3, 50)])
def test_eval_sees_every_example_exactly_once(hosts, batch):
    total = 360  # digits test split; divides neither batch size
    seen, counts = [], set()
    for host in range(hosts):
        start, _ = pipeline.host_range(total, host, hosts)
        batches = list(
            data.local_eval_batches(None, local_batch_size=batch, host=host, hosts=hosts)
        )
        counts.add(len(batches))
        for b in batches:
            assert b["image"].shape == (batch, 32, 32, 3) and b["mask"].shape == (batch,)
            seen.extend(start + b["position"][b["mask"]])
    assert len(counts) == 1  # every host runs the same number of steps
    assert sorted(seen) == list(range(total))


def test_eval_iterator_masks_padding(mesh):
    batches = list(data.eval_iterator(None, global_batch_size=64, mesh=mesh))
    assert len(batches) == 6  # ceil(360 / 64)
    masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])[masks]
    assert masks.sum() == 360 and not masks[-1]
    np.testing.assert_array_equal(labels, digits_arrays(32)["test"][1])


def test_eval_images_keep_the_whole_image():
    first = next(data.eval_images(None, scale_q=48))
    assert first["image"].shape == (48, 48, 3) and first["key"].startswith("digits/test/")
    center = next(data.eval_images(None, scale_q=48, center_crop=32))
    assert center["image"].shape == (32, 32, 3)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"scale": 16}, "below crop_size"),
        ({"scale_range": (40, 36)}, "Smin <= Smax"),
        ({"normalize": "imagenet"}, "normalize"),
        ({"on_corrupt": "ignore"}, "on_corrupt"),
        ({"crop": 3}, "unknown data options"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        data.train_iterator(options, global_batch_size=8, seed=0, mesh=parallel.make_mesh())


def test_bad_split_lists_the_available_ones(mesh):
    with pytest.raises(ValueError, match="available"):
        data.train_iterator({"split": "validation"}, global_batch_size=8, seed=0, mesh=mesh)
