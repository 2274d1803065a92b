"""`vgg-flax similarity` on two folders: scores equal the library calls, heatmaps, bad input."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images
from vgg_flax.experiments.perceptual_example import random_trunk

import vgg_flax
from vgg_flax.cli import main
from vgg_flax.models.vgg import architecture
from vgg_flax.perceptual.dists import load_dists
from vgg_flax.perceptual.losses import perceptual_loss
from vgg_flax.perceptual.lpips import load_lpips
from vgg_flax.perceptual.similarity import heatmap_image
from vgg_flax.weights.usage import Usage

METRICS = ["lpips", "lpips-v0.0", "dists", "content", "style"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A seeded full-width VGG-16 trunk checkpoint, and ref/ and dist/ folders of 3 photo pairs."""
    root = tmp_path_factory.mktemp("similarity")
    model, variables = random_trunk()
    rng = np.random.default_rng(0)
    trunk = vgg_flax.save(
        root / "trunk",
        model,
        variables,
        usage=Usage(architecture(model), features_only=True),
    )
    china, flower = load_sample_images().images
    crops = {"china.png": china[100:228:2, 200:328:2], "sub/flower.jpg": flower[200:264, 300:364]}
    crops["sub/china_2.png"] = china[:64, :64]
    for name, crop in crops.items():
        noisy = np.clip(crop + rng.normal(0, 20, crop.shape), 0, 255).astype(np.uint8)
        for folder, image in (("ref", crop), ("dist", noisy)):
            (root / folder / "sub").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / folder / name, quality=95)
    return root, trunk


def _library_scores(trunk, ref, dist):
    loaded = vgg_flax.load(trunk)
    loss = perceptual_loss("johnson", trunk=loaded)
    parts = jax.jit(lambda a, b: loss(a, content=b, style=b)[1])(dist, ref)
    return {
        "lpips": load_lpips("0.1", trunk=loaded)(ref, dist, normalize=True),
        "lpips-v0.0": load_lpips("0.0", trunk=loaded)(ref, dist, normalize=True),
        "dists": load_dists(trunk=loaded)(ref, dist),
        "content": parts["content"],
        "style": parts["style"],
    }, load_lpips("0.1", trunk=loaded)(ref, dist, spatial=True, normalize=True)


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255


def test_scores_heatmaps_json_and_csv_equal_the_library(folders, tmp_path, capsys):
    root, trunk = folders
    out = tmp_path / "out.json"
    argv = ["similarity", str(root / "ref"), str(root / "dist"), "--trunk", trunk, "--no-progress"]
    argv += ["--metrics", *METRICS, "--json", str(out), "--csv", str(tmp_path / "out.csv")]
    assert main([*argv, "--heatmaps", str(tmp_path / "maps"), "--heatmap-scale", "0.05"]) == 0
    record = json.loads(out.read_text())
    assert record["complete"] and [p["name"] for p in record["pairs"]] == [
        "china.png",
        os.path.join("sub", "china_2.png"),
        os.path.join("sub", "flower.jpg"),
    ]
    names = [p["name"] for p in record["pairs"]]
    ref = np.stack([_read(root / "ref" / n) for n in names])
    dist = np.stack([_read(root / "dist" / n) for n in names])
    expected, maps = _library_scores(trunk, ref, dist)
    for metric in METRICS:
        ours = [p[metric] for p in record["pairs"]]
        np.testing.assert_allclose(ours, expected[metric], rtol=1e-6, err_msg=metric)
        np.testing.assert_allclose(record["mean"][metric], np.mean(expected[metric]), rtol=1e-6)
    for name, values in zip(names, maps, strict=True):
        png = Image.open(tmp_path / "maps" / (os.path.splitext(name)[0] + ".png"))
        assert png.size == (64, 64) and png.mode == "RGB"
        # The library's spatial LPIPS map, coloured (255 at --heatmap-scale).
        expected_png = heatmap_image(values, 0.05).astype(int)
        assert np.abs(np.asarray(png, int) - expected_png).max() <= 1 and expected_png.std() > 0
    table = capsys.readouterr().out
    assert "mean" in table and f"{record['mean']['dists']:.4f}" in table
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == "name,reference,distorted," + ",".join(METRICS) and rows[-1].startswith(
        "mean"
    )


def test_missing_pair_and_unreadable_image_are_clear_errors_and_keep_scores(
    folders, tmp_path, capsys
):
    root, trunk = folders
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in ("china.png", "sub/china_2.png"):
        (dist / name).parent.mkdir(exist_ok=True)
        (dist / name).write_bytes((root / "dist" / name).read_bytes())
    base = ["similarity", str(root / "ref"), str(dist), "--trunk", trunk, "--no-progress"]
    out = tmp_path / "partial.json"
    assert main([*base, "--json", str(out)]) == 2
    message = capsys.readouterr().err
    assert "missing pair" in message and str(dist / "sub" / "flower.jpg") in message
    assert not out.exists()  # nothing was computed
    (dist / "sub" / "flower.jpg").write_bytes(b"not a jpeg")
    for write in ("end", "each"):
        assert main([*base, "--json", str(out), "--write", write, "--metrics", "lpips"]) == 2
        captured = capsys.readouterr()
        assert str(dist / "sub" / "flower.jpg") in captured.err and "not an image" in captured.err
        record = json.loads(out.read_text())
        assert not record["complete"] and "flower.jpg" in record["error"]
        assert [p["name"] for p in record["pairs"]] == [
            "china.png",
            os.path.join("sub", "china_2.png"),
        ]
        assert "china.png" in captured.out  # the table of what was scored
        out.unlink()
    # A distorted image of another size: refused by name, or resized to its reference.
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(dist / "sub" / "flower.jpg")
    assert main([*base, "--metrics", "lpips"]) == 2
    assert "flower.jpg is 50x40" in capsys.readouterr().err
    assert main([*base, "--metrics", "lpips", "--sizes", "resize", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["complete"]


def test_odd_size_heatmap_batches_progress_and_a_crash_keeps_scores(
    folders, tmp_path, monkeypatch, capsys
):
    """One pair a batch: an odd-sized pair's heatmap is its size; a crash mid-run (not bad
    input) leaves the JSON written after each batch, then marked incomplete with the error."""
    from vgg_flax.perceptual.similarity import Scorer

    root, trunk = folders
    rng = np.random.default_rng(1)
    odd = rng.integers(0, 256, (45, 67, 3), dtype=np.uint8)
    for folder in ("ref", "dist"):
        (tmp_path / folder).mkdir()
        Image.fromarray(odd if folder == "ref" else 255 - odd).save(tmp_path / folder / "a.png")
        for name in ("b.png", "c.png"):
            (tmp_path / folder / name).write_bytes((root / folder / "china.png").read_bytes())
    out, real, seen = tmp_path / "out.json", Scorer.__call__, []

    def crashing(self, reference, distorted):
        if len(seen) == 2:  # the third batch: what the first two wrote is on disk
            seen.append(json.loads(out.read_text()))
            raise RuntimeError("boom")
        seen.append(None)
        return real(self, reference, distorted)

    monkeypatch.setattr(Scorer, "__call__", crashing)
    argv = ["similarity", str(tmp_path / "ref"), str(tmp_path / "dist"), "--trunk", trunk]
    argv += ["--metrics", "lpips", "--batch-size", "1", "--json", str(out), "--write", "each"]
    with pytest.raises(RuntimeError, match="boom"):
        main([*argv, "--heatmaps", str(tmp_path / "maps")])
    assert "2/3" in capsys.readouterr().err  # the progress bar stopped at the crash
    during, after = seen[2], json.loads(out.read_text())
    assert [p["name"] for p in during["pairs"]] == ["a.png", "b.png"] and not during["complete"]
    assert [p["name"] for p in after["pairs"]] == ["a.png", "b.png"] and not after["complete"]
    assert "RuntimeError" in after["error"] and "boom" in after["error"]
    ref, dist = (_read(tmp_path / folder / "a.png")[None] for folder in ("ref", "dist"))
    metric = load_lpips("0.1", trunk=vgg_flax.load(trunk))
    np.testing.assert_allclose(
        after["pairs"][0]["lpips"], metric(ref, dist, normalize=True)[0], rtol=1e-6
    )
    png = np.asarray(Image.open(tmp_path / "maps" / "a.png"), int)
    expected = heatmap_image(metric(ref, dist, spatial=True, normalize=True)[0]).astype(int)
    assert png.shape == (45, 67, 3) and np.abs(png - expected).max() <= 1
