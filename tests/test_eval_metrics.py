"""Top-k errors on hand-made scores: ties, masks for a final partial batch, counting once."""

import numpy as np
import pytest

from vgg_flax.evaluate import TopKCounts, label_ranks, topk_errors


def test_ranks_break_ties_by_lower_class_index():
    scores = np.array(
        [
            [0.1, 0.5, 0.5, 0.2],  # label 2 ties with class 1, which has the lower index
            [0.1, 0.5, 0.5, 0.2],  # label 1 wins the same tie
            [0.3, 0.3, 0.3, 0.3],  # all equal: rank is the label's index
            [0.9, 0.0, 0.0, 0.0],
        ]
    )
    assert label_ranks(scores, np.array([2, 1, 3, 0])).tolist() == [1, 0, 3, 0]


def test_top1_top5_on_hand_made_scores():
    scores = np.zeros((4, 7))
    scores[0] = [7, 6, 5, 4, 3, 2, 1]  # label 0: rank 0
    scores[1] = [7, 6, 5, 4, 3, 2, 1]  # label 4: rank 4 (top-5, not top-1)
    scores[2] = [7, 6, 5, 4, 3, 2, 1]  # label 5: rank 5 (neither)
    scores[3] = [1, 1, 1, 1, 1, 1, 1]  # label 6 ties with all: rank 6 (neither)
    errors = topk_errors(scores, np.array([0, 4, 5, 6]))
    assert errors == pytest.approx({"top1": 75.0, "top5": 50.0})


def test_partial_final_batch_counts_every_real_example_once():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((10, 6))
    labels = rng.integers(0, 6, 10)
    whole = TopKCounts((1, 2)).add(scores, labels)
    counts = TopKCounts((1, 2))
    for start in range(0, 10, 4):  # batches of 4, 4, then 2 real rows padded to 4
        rows = scores[start : start + 4]
        real = len(rows)
        batch = np.concatenate([rows, np.tile(scores[:1], (4 - real, 1))])  # filler copies row 0
        batch_labels = np.concatenate([labels[start : start + 4], np.zeros(4 - real, int)])
        counts = counts.add(batch, batch_labels, mask=np.arange(4) < real)
    assert counts == whole
    assert counts.total == 10
    ranks = label_ranks(scores, labels)
    assert counts.correct == (int(np.sum(ranks < 1)), int(np.sum(ranks < 2)))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="labels must lie"):
        label_ranks(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        label_ranks(np.full((1, 3), np.nan), np.array([0]))
    with pytest.raises(ValueError, match="no examples"):
        TopKCounts().errors()
    with pytest.raises(ValueError, match="mask shape"):
        TopKCounts().add(np.zeros((2, 3)), np.array([0, 1]), mask=np.ones(3, bool))
