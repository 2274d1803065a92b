"""The table script's pieces: checkpoint specs, combining runs, the paper's rows, markdown."""

import numpy as np
import pytest

from experiments import paper_results
from experiments import reproduce_tables as tables


def test_checkpoint_specs():
    assert tables.parse_checkpoint("runs/d/model@256-512") == ("runs/d/model", (256, 512))
    assert tables.parse_checkpoint("vgg16-397923af.pth@384") == ("vgg16-397923af.pth", 384)
    assert tables.parse_checkpoint("runs/a/model") == ("runs/a/model", 256)
    with pytest.raises(ValueError, match="bad training scale"):
        tables.parse_checkpoint("runs/a/model@big")


def test_paper_rows_and_test_scales():
    assert len(paper_results.PAPER_RESULTS) == 12 + 10 + 6 + 1
    row = tables.paper_row(5, ("D",), (256, 512), (256, 384, 512), "dense+multicrop")
    assert (row.top1, row.top5) == (24.4, 7.2)
    row = tables.paper_row(4, ("C",), 384, paper_results.multi_test_scales(384), "dense")
    assert (row.top1, row.top5) == (27.8, 9.2)
    assert paper_results.single_test_scale((256, 512)) == (384,)
    assert tables.paper_row(3, ("D-BN",), 256, (256,), "dense") is None


def test_combine_is_the_mean_posterior_and_errors_count_each_example():
    dense = {0: (1, np.array([0.1, 0.6, 0.3])), 1: (0, np.array([0.2, 0.5, 0.3]))}
    crops = {0: (1, np.array([0.5, 0.2, 0.3])), 1: (0, np.array([0.6, 0.1, 0.3]))}
    both = tables.combine([dense, crops])
    np.testing.assert_allclose(both[0][1], [0.3, 0.4, 0.3])
    np.testing.assert_allclose(both[1][1], [0.4, 0.3, 0.3])
    assert tables.errors(both)["top1"] == 0.0
    assert tables.errors(dense)["top1"] == 50.0
    with pytest.raises(ValueError, match="disagree on the label"):
        tables.combine([dense, {0: (2, dense[0][1]), 1: dense[1]}])


def test_markdown_puts_the_paper_beside_ours():
    paper = tables.paper_row(3, ("A",), 256, (256,), "dense")
    rows = [
        dict(table=3, net="A", train_scale="256", test_scales="256", protocol="dense",
             top1=30.04, top5=10.96, paper=paper),
    ]  # fmt: skip
    text = tables.markdown(rows, 50000)
    assert "| 3 | A | 256 | 256 | dense | 30.0 | 11.0 | 29.6 | 10.4 |" in text
