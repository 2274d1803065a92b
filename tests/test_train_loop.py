"""The training loop end to end: data-parallel equivalence, resume after SIGKILL, SIGTERM,
non-finite loss, and what a run leaves behind. Runs use tiny widths (train_tiny.TINY): the behaviour
tested does not depend on them, and a full-width VGG-A on 4 simulated devices needs over 8 GB."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import train_tiny
from quick_compile import quick_compile_env
from train_runner import small_config

import vgg_flax
from vgg_flax.train import trainer
from vgg_flax.weights import checkpoint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IDENTITY = {"arch": "A", "batch_norm": True, "num_classes": 10, **train_tiny.TINY}


def start(
    *args: str,
    slow: float = 0.0,
    devices: int = 0,
    quick: bool = False,
    extra_env: dict | None = None,
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    if slow:
        env["TRAIN_RUNNER_SLOW"] = str(slow)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    # XLA's quick compile only for runs compared with runs compiled alike: never for the resume
    # test, whose runs must be bit-identical to one compiled the way this process compiles.
    if quick:
        env = quick_compile_env(env)
    return subprocess.Popen(
        [sys.executable, str(HERE / "train_runner.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"run ended before {path} appeared: {process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


def final_state(workdir: Path) -> dict:
    manager = checkpoint.training_manager(workdir / "checkpoints")
    state, meta = checkpoint.restore_training(manager, None, IDENTITY)
    return state, meta


def test_one_step_on_four_devices_equals_one_device(tmp_path):
    # One process with four simulated devices: the same step on a mesh of one and of all four.
    finish(start("--one-step", str(tmp_path / "step.npz"), devices=4, quick=True))
    saved = np.load(tmp_path / "step.npz")
    assert int(saved["one_devices"]) == 1 and int(saved["all_devices"]) == 4
    one = {name[3:]: saved[name] for name in saved.files if name.startswith("one")}
    four = {name[3:]: saved[name] for name in saved.files if name.startswith("all")}
    names = [name for name in one if name.startswith("[")]
    assert len(names) == 2 * 8 + 3 * 2 + 2 * 8 + 2 * 8  # convs, fc6-8, BN scale/bias, BN stats
    # The parameters (and BatchNorm statistics) agree to a relative error of 1e-5...
    total = sum(float(np.sum(one[n].astype(np.float64) ** 2)) for n in names)
    error = sum(float(np.sum((four[n].astype(np.float64) - one[n]) ** 2)) for n in names)
    assert np.sqrt(error / total) <= 1e-5
    for name in names:
        # Absolute floor: 1e-8, or 1e-6 of the tensor's scale (a BatchNorm mean near zero is a
        # sum whose float32 rounding differs when 4 devices add their shares in another order).
        floor = max(1e-8, 1e-6 * float(np.max(np.abs(one[name]))))
        np.testing.assert_allclose(four[name], one[name], rtol=1e-5, atol=floor, err_msg=name)
        # ...and so do the updates themselves, which are much smaller than the parameters
        # (a gradient summed instead of averaged over devices would be 4x off). The convs'
        # biases before BatchNorm have zero gradient up to rounding: hence the absolute floor.
        update, reference = four["update" + name], one["update" + name]
        gap = np.linalg.norm(update - reference)
        assert gap <= 1e-3 * np.linalg.norm(reference) + 1e-7 * np.sqrt(reference.size), name
    assert float(four["_loss"]) == pytest.approx(float(one["_loss"]), rel=1e-5)


@pytest.mark.tensorflow  # trains on TFDS digits, here and in subprocesses
def test_resume_after_sigkill_is_bit_identical_and_sigterm_saves(tmp_path):
    # The uninterrupted run and the resumed one train in this process (a subprocess of their
    # own would add nothing but its start-up); the two that get signals are real processes.
    # They start once the uninterrupted run is done: its initialisation and training step are
    # then in JAX's persistent cache (conftest.py), and they read them from there.
    trainer.train(small_config(), str(tmp_path / "straight"))
    killed = start(str(tmp_path / "killed"), slow=1.0)
    stopped = start(str(tmp_path / "stopped"), slow=1.0)
    wait_for(tmp_path / "killed" / "checkpoints" / "2", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model").exists()  # it really died mid-run
    wait_for(tmp_path / "stopped" / "checkpoints" / "2", stopped)
    stopped.send_signal(signal.SIGTERM)
    trainer.train(small_config(), str(tmp_path / "killed"))  # resumes the killed run
    summary = json.loads(finish(stopped).strip().splitlines()[-1])
    assert summary["stopped_by_sigterm"] and 2 <= summary["step"] < 6
    assert final_state(tmp_path / "stopped")[1]["step"] == summary["step"]

    want, want_meta = final_state(tmp_path / "straight")
    got, got_meta = final_state(tmp_path / "killed")
    assert want_meta["step"] == got_meta["step"] == 6
    assert got_meta["data"] == want_meta["data"]  # the plateau rule's state is in the leaves
    leaves = jax.tree_util.tree_leaves_with_path(want)
    assert len(leaves) > 20
    for (path, a), b in zip(leaves, jax.tree.leaves(got), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)

    # What a finished run leaves behind.
    run = tmp_path / "straight"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "eval"}
    assert {"loss", "learning_rate", "images_per_s"} <= set(records[0])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run / "tb"))
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((run / "config.json").read_text())  # the run's full config
    assert config["arch"] == "A" and config["width"] == 0.125
    assert json.loads((run / "summary.json").read_text())["step"] == 6
    model, variables, _ = vgg_flax.load(run / "model")
    assert model.arch == "A" and model.batch_norm and model.width == 0.125
    np.testing.assert_array_equal(
        variables["params"]["fc8"]["kernel"], want["params"]["fc8"]["kernel"]
    )

    # A rerun of the finished workdir keeps its evaluation; summary.json stays strict JSON.
    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    first = strict((run / "summary.json").read_text())
    trainer.train(small_config(), str(run))
    again = strict((run / "summary.json").read_text())
    assert first["eval"] and again["eval"] == first["eval"]


@pytest.mark.tensorflow  # trains on TFDS digits in a subprocess
def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from vgg_flax import data

    make = data.train_iterator

    class Poisoned:
        """The real iterator, with NaN images in its 4th batch."""

        def __init__(self, inner):
            self.inner, self.count = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __next__(self):
            batch, self.count = next(self.inner), self.count + 1
            if self.count == 4:
                batch = {**batch, "image": batch["image"] * np.nan}
            return batch

    monkeypatch.setattr(data, "train_iterator", lambda *a, **k: Poisoned(make(*a, **k)))
    config = small_config({"checkpoint.every_steps": 1})
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step 4: loss nan.*is step 3 in"):
        trainer.train(config, str(tmp_path))
    state, meta = final_state(tmp_path)
    assert meta["step"] == 3
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_steps_saved_without_momentum_are_smaller_and_resume_with_it_at_zero(tmp_path, capsys):
    # checkpoint.optimizer_state=False: the kept steps lose SGD's momentum, not the schedule.
    overrides = {"checkpoint.optimizer_state": False, "eval_every_steps": 100}
    trainer.train(small_config({**overrides, "total_steps": 2}), str(tmp_path))
    state, meta = final_state(tmp_path)
    assert meta["step"] == 2 and meta[checkpoint.MOMENTUM_KEY] is False
    buffers = jax.tree.leaves(state["opt_state"])
    assert buffers and all(np.ndim(leaf) == 0 for leaf in buffers)  # scalars only
    assert 2 in [int(leaf) for leaf in buffers]  # the schedule's step count survives
    step_dir, model_dir = tmp_path / "checkpoints" / "2", tmp_path / "model"
    assert folder_bytes(step_dir) < 1.2 * folder_bytes(model_dir)  # about the weights alone

    capsys.readouterr()
    summary = trainer.train(small_config({**overrides, "total_steps": 3}), str(tmp_path))
    assert summary["step"] == 3
    said = capsys.readouterr().out
    assert "resumed from step 2" in said and "saved without momentum: it restarts from zero" in said


@pytest.mark.tensorflow  # trains on TFDS digits in a subprocess
def test_two_hosts_on_loopback_train_one_model(tmp_path):
    with socket.socket() as sock:  # a free port for the coordinator
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hosts = [
        start(
            str(tmp_path),
            json.dumps({"total_steps": 4}),
            extra_env={
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(index),
            },
            quick=True,
        )
        for index in range(2)
    ]
    summaries = [json.loads(finish(host).strip().splitlines()[-1]) for host in hosts]
    assert summaries[0]["step"] == summaries[1]["step"] == 4
    assert summaries[0]["eval"] == summaries[1]["eval"]  # both hosts see the same global result
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    model, variables, _ = vgg_flax.load(tmp_path / "model")
    assert model.arch == "A" and variables["params"]["fc8"]["kernel"].shape[-1] == 10
