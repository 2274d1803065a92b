"""Fixtures shared by several test files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from filelock import FileLock
from train_runner import small_config

# The demo's config at the tests' narrow widths (train_runner.SMALL): 10 epochs of 44 steps of 32,
# the rate divided by 10 after 7, ~98% top-1 on the 360 test digits (the full-width demo: 98.6%).
# Its evaluation covers the whole test split. Steps are cheap (~20/s on a CPU); compiling
# dominates. Made once per test session (`digits_run`).
DIGITS_RUN = {
    "batch_size": 32,
    "total_steps": 440,
    "eval_every_steps": 440,
    "eval_batches": 0,  # the whole split, as experiments.evaluate reads it
    "eval_batch_size": 120,
    "checkpoint.every_steps": 440,
    "log_every_steps": 110,
    "dropout": 0.0,  # the 32-wide head learns faster without it
    "optim.learning_rate": 0.02,
    "optim.warmup_steps": 10,
    "optim.step_epochs": 7,
}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, worker_id) -> tuple[Path, dict]:
    """(workdir, summary) of one short digits training run, made once per test session.

    Tests read it and must not change it (copy it first).
    """
    from vgg_flax.train import trainer

    if worker_id == "master":  # one process: a folder of this session's own
        workdir = tmp_path_factory.mktemp("digits_run")
        return workdir, trainer.train(small_config(DIGITS_RUN), str(workdir))
    # pytest-xdist's workers share the session's base folder: the first to get there trains,
    # the others wait for it and read its summary.
    shared = tmp_path_factory.getbasetemp().parent
    workdir, done = shared / "digits_run", shared / "digits_run.json"
    with FileLock(str(shared / "digits_run.lock")):
        if not done.exists():
            summary = trainer.train(small_config(DIGITS_RUN), str(workdir))
            done.write_text(json.dumps(summary))
    return workdir, json.loads(done.read_text())


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test file's references, restored after it.

    The test workers already keep both cores busy: a second torch thread mostly waits.
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
