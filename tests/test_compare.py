"""What a run records and how runs are compared.

`python -m experiments.compare`: the curves of several runs, written by the trainer's own
MetricsWriter, in one PNG with one colour per run; the run's config as config.json and as
TensorBoard hparams, read back with TensorBoard's own reader.
"""

import json

import numpy as np
from matplotlib import colors
from PIL import Image

from experiments import compare
from vgg_flax.train.metrics import HPARAM_METRICS, MetricsWriter

RUN_COLOURS = ("C0", "C1")  # matplotlib's colour cycle: one per run


def write_run(workdir, *, steps: int, rate: float) -> None:
    """A run's metrics.jsonl (and TensorBoard events) as the trainer writes them."""
    writer = MetricsWriter(str(workdir), enabled=True)
    for step in range(1, steps + 1):
        loss = 2.3 / step
        scalars = {"loss": loss, "cross_entropy": loss * 0.9, "accuracy": 1 - loss / 2.3}
        writer.write(step, {**scalars, "learning_rate": rate, "images_per_s": 100.0}, kind="train")
        if step % 5 == 0:
            evaluation = {"accuracy": 1 - loss / 2.0, "top5": 1.0, "loss": loss, "examples": 64.0}
            writer.write(step, evaluation, kind="eval")
    writer.close()


def pixels_of(image: np.ndarray, colour: str) -> int:
    """How many pixels of `image` (RGB) have exactly the matplotlib colour `colour`."""
    rgb = np.round(np.array(colors.to_rgb(colour)) * 255).astype(np.uint8)
    return int(np.all(image == rgb, axis=-1).sum())


def test_compare_draws_each_run(tmp_path, capsys):
    write_run(tmp_path / "fast", steps=20, rate=0.01)
    write_run(tmp_path / "slow", steps=10, rate=0.001)
    out = tmp_path / "curves.png"
    argv = [str(tmp_path / "fast"), str(tmp_path / "slow" / "metrics.jsonl"), "--output", str(out)]
    assert compare.main(argv) == 0
    assert "2 runs" in capsys.readouterr().out
    image = np.asarray(Image.open(out).convert("RGB"))
    assert all(pixels_of(image, colour) > 100 for colour in RUN_COLOURS)

    # One run: only its own colour.
    assert compare.main([str(tmp_path / "slow"), "--labels", "slow", "--output", str(out)]) == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    assert pixels_of(image, "C0") > 100 and pixels_of(image, "C1") == 0


def test_labels(tmp_path):
    runs = [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]
    for folder in (*runs, tmp_path / "c"):
        (tmp_path / folder).mkdir(parents=True)
    assert compare.run_labels(runs, None) == runs  # same folder names: the paths tell them apart
    assert compare.run_labels([runs[0], str(tmp_path / "c")], None) == ["run", "c"]
    assert compare.run_labels(runs, ["x", "y"]) == ["x", "y"]


def test_errors_name_the_fix(tmp_path, capsys):
    write_run(tmp_path / "run", steps=5, rate=0.01)
    assert compare.main([str(tmp_path / "missing"), "--output", str(tmp_path / "c.png")]) == 2
    assert "training workdir" in capsys.readouterr().err
    argv = [str(tmp_path / "run"), "--labels", "a", "b", "--output", str(tmp_path / "c.png")]
    assert compare.main(argv) == 2
    assert "--labels needs 1 distinct labels" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_config_recorded_as_json_and_tensorboard_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    config = {"arch": "A", "batch_norm": True, "optim": {"learning_rate": 0.01}, "skip": ["fc8"]}
    writer = MetricsWriter(str(tmp_path), enabled=True)
    writer.write_config(config)
    writer.write(3, {"accuracy": 0.5, "top5": 0.9, "loss": 1.0}, kind="eval")
    writer.close()
    assert json.loads((tmp_path / "config.json").read_text()) == config

    # Read back with TensorBoard's own reader, as `tensorboard --logdir DIR/tb` does.
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hparams = {name: value.WhichOneof("kind") for name, value in start.hparams.items()}
    assert hparams == {
        "arch": "string_value",
        "batch_norm": "bool_value",
        "optim.learning_rate": "number_value",
        "skip": "string_value",
    }
    assert start.hparams["optim.learning_rate"].number_value == 0.01
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    tags = {info.name.tag for info in experiment.metric_infos}
    assert tags == set(HPARAM_METRICS) and "eval/accuracy" in events.Tags()["scalars"]
